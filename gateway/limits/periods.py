"""Calendar periods in UTC: which day or month an instant falls in, and when it ends.

Quotas count per UTC day and per calendar month (UTC), whatever the time zone of
the gateway's host or of its users: a quota resets at 00:00 UTC, for everyone at
once, and each period's counters are named after it (`2026-12-07`, `2026-12`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

PERIODS = ("day", "month")


@dataclass(frozen=True, slots=True)
class Window:
    """One period: its name (part of the counter's key), its bounds in epoch seconds,
    and the instant it was found for."""

    period: str
    name: str
    start: float
    end: float
    now: float

    @property
    def reset_s(self) -> float:
        """Seconds from `now` until the period ends and its quota starts afresh."""
        return max(0.0, self.end - self.now)


def window(period: str, now: float) -> Window:
    """The day or month (UTC) that contains the epoch instant NOW."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start.timestamp() + 86400
        return Window(period, start.strftime("%Y-%m-%d"), start.timestamp(), end, now)
    if period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        following = start.replace(year=year, month=month)
        name = start.strftime("%Y-%m")
        return Window(period, name, start.timestamp(), following.timestamp(), now)
    raise ValueError(f"unknown quota period {period!r}")


def go_duration(seconds: float) -> str:
    """A reset as the `x-ratelimit-reset-*` headers write it: `6m0s`, `23h59m59s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
