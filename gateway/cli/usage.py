"""`vllm-gateway usage report`: usage and cost per day or month, from the admin API.

It reads <url>/admin/v1/usage/report with the same URL, admin token and TLS options
as `vllm-gateway keys`, and prints a table, the API's JSON (--json) or its CSV
(--csv, spreadsheet-safe as the gateway writes it). Exit codes are those of `keys`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

from gateway.admin.quota_schemas import QuotaOut, QuotaReport
from gateway.admin.report_schemas import ReportTotalsOut, UsageReport
from gateway.cli.admin_client import (
    ADMIN_PREFIX,
    AdminApi,
    ApiError,
    UsageError,
    error_message,
    map_http_errors,
    run_admin,
)
from gateway.cli.keys import connection_flags
from gateway.cli.output import Output
from gateway.cli.upstreams import printable
from gateway.usage.report import usd

REPORT_HELP = "usage and cost per UTC day or month, per key, tenant and/or model"
_GROUP_TITLES = {
    "key": ("KEY", "key_id"),
    "tenant": ("TENANT", "tenant"),
    "model": ("MODEL", "model"),
}
_COUNT_TITLES = ("REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "ESTIMATED", "COST USD")
_QUOTA_TITLES = ("SCOPE", "OWNER", "QUOTA", "PERIOD", "USED", "RESERVED", "LIMIT", "REMAINING")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report", parents=[connection_flags()], help=REPORT_HELP, description=REPORT_HELP
    )
    report.add_argument(
        "--group-by",
        metavar="LIST",
        help="comma list of key, tenant, model (default: tenant,model)",
    )
    report.add_argument(
        "--period", choices=("day", "month"), help="lines per UTC day or month (default: day)"
    )
    report.add_argument("--since", metavar="YYYY-MM-DD", help="first UTC day counted")
    report.add_argument(
        "--until", metavar="YYYY-MM-DD", help="last UTC day counted (default: today)"
    )
    report.add_argument("--tenant", help="only this tenant's usage")
    report.add_argument("--key", metavar="KEY_ID", help="only this key's usage")
    report.add_argument("--model", help="only this model's usage")
    report.add_argument("--csv", action="store_true", help="print the gateway's CSV")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # As in `keys`: a client command's own variables are read at its edge.
    return run_with(args, os.environ)


def run_with(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    def action(api: AdminApi, out: Output, err: Output) -> int:
        if args.csv and args.json:
            raise UsageError("--csv and --json exclude each other")
        params = report_params(args)
        if args.csv:
            out.write(fetch_csv(api, params))
            return 0
        data = api.call("GET", "usage/report", params=params)
        report = UsageReport.model_validate(data)
        if args.json:
            out.line(json.dumps(data, indent=2, ensure_ascii=False))
            return 0
        for line in report_table(report):
            out.line(line)
        return 0

    return run_admin("usage report", args, environ, action)


def report_params(args: argparse.Namespace) -> dict[str, str]:
    names = ("group_by", "period", "since", "until", "tenant", "key", "model")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def fetch_csv(api: AdminApi, params: Mapping[str, str]) -> str:
    with map_http_errors(str(api.client.base_url).removesuffix(f"{ADMIN_PREFIX}/")):
        response = api.client.get("usage/report", params={**params, "format": "csv"})
    if response.is_error:
        raise ApiError(response.status_code, error_message(response))
    return response.text


def report_table(report: UsageReport) -> list[str]:
    """The lines and a TOTAL row; then, if any, where the quotas stand now."""
    groups = [_GROUP_TITLES[name] for name in report.group_by]
    rows: list[tuple[str, ...]] = [("PERIOD", *(title for title, _ in groups), *_COUNT_TITLES)]
    for line in report.data:
        cells = (printable(getattr(line, attribute) or "") for _, attribute in groups)
        rows.append((line.period, *cells, *_counts(line)))
    rows.append(("TOTAL", *("" for _ in groups), *_counts(report.total)))
    lines = _aligned(rows, numeric_from=1 + len(groups))
    lines.append(f"{report.since} to {report.until} (UTC), per {report.period}")
    if report.quotas:
        quota_rows = [_QUOTA_TITLES, *(_quota_row(q, o) for q in report.quotas for o in q.quotas)]
        lines += ["", *_aligned(quota_rows, numeric_from=4)]
    return lines


def _counts(totals: ReportTotalsOut) -> tuple[str, ...]:
    return (
        str(totals.requests),
        str(totals.prompt_tokens),
        str(totals.completion_tokens),
        str(totals.total_tokens),
        str(totals.estimated_requests),
        totals.cost_usd,
    )


def _quota_row(owner: QuotaReport, quota: QuotaOut) -> tuple[str, ...]:
    def amount(value: int) -> str:
        return f"{usd(value)} USD" if quota.unit == "micro_usd" else str(value)

    name = owner.key_id if owner.scope == "key" and owner.key_id else owner.tenant
    return (
        owner.scope,
        printable(name),
        quota.kind,
        quota.period_name,
        amount(quota.used),
        amount(quota.reserved),
        amount(quota.limit),
        amount(quota.remaining),
    )


def _aligned(rows: list[tuple[str, ...]], numeric_from: int) -> list[str]:
    """Columns padded to their widest cell; numbers (from column NUMERIC_FROM) to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i >= numeric_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
