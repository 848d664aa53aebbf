"""The usage report as CSV (RFC 4180), safe to open in a spreadsheet.

One header row, then one row per line of the report; no total row (a spreadsheet
sums columns) and no quotas (the JSON has them). Text is quoted, numbers are not,
rows end in CRLF. Tenant, key and model names come from clients and operators: a
cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return (or their
full-width forms) would run as a formula in Excel, LibreOffice or Google Sheets, so
it gets a leading `'` (OWASP, CSV Injection). The JSON report carries names unchanged.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from gateway.usage.report import Report, usd

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_GROUP_COLUMNS = {"key": "key_id", "tenant": "tenant", "model": "model"}
COUNT_COLUMNS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_requests",
    "cost_usd",
)
MEDIA_TYPE = "text/csv; charset=utf-8"


def safe_cell(text: str) -> str:
    """TEXT as a spreadsheet shows it, never as a formula."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def report_csv(report: Report) -> str:
    group_by = report.query.group_by
    buffer = io.StringIO()
    # QUOTE_NONNUMERIC: every text cell quoted, so a name is never split or read as a number.
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    writer.writerow(["period", *(_GROUP_COLUMNS[name] for name in group_by), *COUNT_COLUMNS])
    for key, totals in report.lines:
        groups = {"key": key.key_id, "tenant": key.tenant, "model": key.model}
        counts = totals.counts
        writer.writerow(
            [
                key.period,
                *(safe_cell(groups[name] or "") for name in group_by),
                counts.requests,
                counts.prompt_tokens,
                counts.completion_tokens,
                counts.prompt_tokens + counts.completion_tokens,
                counts.estimated_requests,
                Decimal(usd(totals.cost)),  # a number: unquoted, six decimals kept
            ]
        )
    return buffer.getvalue()
