"""Usage reports: the usage store's rows summed per UTC day or calendar month and per
key, tenant and/or model, each line with its cost from the price table.

Cost is exact integer arithmetic. Each stored row (one principal, tenant, model and
UTC day) is priced in whole micro-dollars, rounded up as a quota charge is
(`Price.cost`), and a line's cost is the sum of its rows' integers. So a report's
total is the sum of its lines and is the same however the report is grouped. A
cost quota rounds up each request instead, so its counter may be above the report's
cost by less than one micro-dollar per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

from gateway.limits.quotas import FREE, Price
from gateway.usage.records import UsageCounts, UsageKey

GROUPS = ("key", "tenant", "model")
PERIODS = ("day", "month")
# A bound on the lines of one report, so one request cannot build an answer of
# unbounded size (a year of days times every key times every model).
MAX_LINES = 50_000


class ReportTooLarge(Exception):
    """The report would have more than MAX_LINES lines; the message says how to narrow it."""


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """What to sum: the days [since, until] (UTC), grouped by period and `group_by`
    (a subset of GROUPS, in the order given), only rows that match every filter."""

    group_by: tuple[str, ...]
    period: str
    since: date
    until: date
    tenant: str | None = None
    key: str | None = None
    model: str | None = None

    def wants(self, key: UsageKey) -> bool:
        return (
            self.since <= key.day <= self.until
            and self.tenant in (None, key.tenant)
            and self.key in (None, key.principal)
            and self.model in (None, key.model)
        )


@dataclass(frozen=True, slots=True, order=True)
class LineKey:
    """A line's period (`2026-12-07` or `2026-12`) and its groups; None: not grouped by."""

    period: str
    key_id: str | None = None
    tenant: str | None = None
    model: str | None = None


@dataclass(slots=True)
class LineTotals:
    counts: UsageCounts = field(default_factory=UsageCounts)
    cost: int = 0  # micro-dollars

    def add(self, counts: UsageCounts, cost: int) -> None:
        self.counts.add(counts)
        self.cost += cost


@dataclass(frozen=True, slots=True)
class Report:
    query: ReportQuery
    lines: list[tuple[LineKey, LineTotals]]
    total: LineTotals


def period_name(day: date, period: str) -> str:
    """The UTC period DAY falls in, named as the quotas name it."""
    return day.isoformat() if period == "day" else day.strftime("%Y-%m")


def build_report(
    rows: Iterable[tuple[UsageKey, UsageCounts]], query: ReportQuery, prices: Mapping[str, Price]
) -> Report:
    """Sum ROWS that QUERY wants into its lines, sorted by period, then by the groups
    in `group_by` order. A model without a price costs nothing, as for quotas."""
    lines: dict[LineKey, LineTotals] = {}
    total = LineTotals()
    for key, counts in rows:
        if not query.wants(key):
            continue
        cost = prices.get(key.model, FREE).cost(counts.prompt_tokens, counts.completion_tokens)
        line = _line_key(key, query)
        if line not in lines and len(lines) >= MAX_LINES:
            raise ReportTooLarge(
                f"the report has more than {MAX_LINES} lines: shorten since..until, "
                "report per month, group by less or filter by tenant, key or model"
            )
        lines.setdefault(line, LineTotals()).add(counts, cost)
        total.add(counts, cost)
    ordered = sorted(lines.items(), key=lambda item: _sort_key(item[0], query.group_by))
    return Report(query, ordered, total)


def usd(micro: int) -> str:
    """Micro-dollars as USD with six decimals, exactly: 1234567 -> `1.234567`."""
    whole, fraction = divmod(micro, 1_000_000)
    return f"{whole}.{fraction:06d}"


def _line_key(key: UsageKey, query: ReportQuery) -> LineKey:
    groups = query.group_by
    return LineKey(
        period=period_name(key.day, query.period),
        key_id=key.principal if "key" in groups else None,
        tenant=key.tenant if "tenant" in groups else None,
        model=key.model if "model" in groups else None,
    )


def _sort_key(line: LineKey, group_by: tuple[str, ...]) -> tuple[str, ...]:
    values = {"key": line.key_id, "tenant": line.tenant, "model": line.model}
    return (line.period, *(values[name] or "" for name in group_by))
