"""Per-request timing and fault knobs: the CLI's defaults, overridden by `x-sim-*` headers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sim.config import SimConfig
from gateway.sim.errors import BadRequest

TTFT_HEADER = b"x-sim-ttft-ms"
ITL_HEADER = b"x-sim-itl-ms"
STALL_HEADER = b"x-sim-stall-ms"
FAIL_STATUS_HEADER = b"x-sim-fail-status"
DROP_AFTER_HEADER = b"x-sim-drop-after"
# A header can also switch off a fault the CLI turned on.
_OFF = {b"", b"off", b"none"}
_HEADERS = (TTFT_HEADER, ITL_HEADER, STALL_HEADER, FAIL_STATUS_HEADER, DROP_AFTER_HEADER)


@dataclass(frozen=True, slots=True)
class Knobs:
    ttft_ms: float
    itl_ms: float
    stall_ms: float
    fail_status: int | None
    drop_after: int | None

    @classmethod
    def defaults(cls, config: SimConfig) -> Knobs:
        return cls(
            ttft_ms=config.ttft_ms,
            itl_ms=config.itl_ms,
            stall_ms=config.stall_ms,
            fail_status=config.fail_status,
            drop_after=config.drop_after,
        )

    def override(self, headers: Mapping[bytes, bytes]) -> Knobs:
        """These knobs with any `x-sim-*` header in HEADERS applied; bad values are a 400."""
        if not any(name in headers for name in _HEADERS):
            return self
        fail_status = headers.get(FAIL_STATUS_HEADER)
        drop_after = headers.get(DROP_AFTER_HEADER)
        return Knobs(
            ttft_ms=_milliseconds(headers, TTFT_HEADER, self.ttft_ms),
            itl_ms=_milliseconds(headers, ITL_HEADER, self.itl_ms),
            stall_ms=_milliseconds(headers, STALL_HEADER, self.stall_ms),
            fail_status=self.fail_status if fail_status is None else _fail_status(fail_status),
            drop_after=self.drop_after if drop_after is None else _drop_after(drop_after),
        )


def _number(name: bytes, value: bytes) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise BadRequest(f"Header {name.decode()} must be a finite number")
    return number


def _milliseconds(headers: Mapping[bytes, bytes], name: bytes, default: float) -> float:
    value = headers.get(name)
    if value is None:
        return default
    number = _number(name, value)
    if number < 0:
        raise BadRequest(f"Header {name.decode()} must be >= 0")
    return number


def _fail_status(value: bytes) -> int | None:
    if value.strip().lower() in _OFF:
        return None
    status = int(_number(FAIL_STATUS_HEADER, value))
    if status == 0:
        return None
    if not 400 <= status <= 599:
        raise BadRequest("Header x-sim-fail-status must be an HTTP error status (400-599)")
    return status


def _drop_after(value: bytes) -> int | None:
    if value.strip().lower() in _OFF:
        return None
    count = int(_number(DROP_AFTER_HEADER, value))
    return count if count >= 0 else None
