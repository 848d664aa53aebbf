"""`GET /admin/v1/usage/report`: usage and cost per UTC day or month, per key, tenant
and/or model, as JSON or CSV; with the quotas of the keys and tenants it names.

A read: no audit entry. The query is checked before the store is read: a bad date,
`since` after `until`, a range over MAX_DAYS or an unknown group is a 422 naming the
parameter. The range is bounded because every row of it is read and summed here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, NoReturn

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from gateway.admin.keys import Admin
from gateway.admin.quota_schemas import QuotaReport
from gateway.admin.quotas import QuotaRoutes
from gateway.admin.report_csv import MEDIA_TYPE, report_csv
from gateway.admin.report_schemas import ReportParams, UsageReport
from gateway.keys.store import KeyNotFound, KeyStore
from gateway.limits.quota_admission import QuotaAdmissions
from gateway.limits.quotas import Price
from gateway.usage.report import GROUPS, Report, ReportQuery, ReportTooLarge, build_report
from gateway.usage.store import UsageStore

# The longest range of days one report may cover, per period.
MAX_DAYS = {"day": 366, "month": 1096}
# Quotas are read for at most this many keys and tenants: the ones with most tokens.
MAX_QUOTA_OWNERS = 50
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
}


@dataclass(frozen=True, slots=True)
class ReportRoutes:
    """The report route over the usage store, priced with the quotas' price table."""

    store: KeyStore
    usage: UsageStore
    quotas: QuotaAdmissions | None
    clock: Callable[[], datetime]

    def router(self) -> APIRouter:
        router = APIRouter(tags=["usage"])
        router.add_api_route(
            "/usage/report",
            self.report,
            methods=["GET"],
            response_model=UsageReport,
            responses=_RESPONSES,
        )
        return router

    async def report(
        self, request: Request, admin: Admin, params: Annotated[ReportParams, Query()]
    ) -> Response:
        """Requests, tokens and cost (USD, from `pricing`) per UTC day or month and per
        key, tenant and/or model, over UTC days `since` to `until` (both included).

        JSON by default; CSV with `format=csv` or `Accept: text/csv`. Grouped by key or
        tenant, the JSON also has their quotas where they stand now.
        """
        query = report_query(params, self.clock().date())
        rows = await self.usage.rows(query.since, query.until)
        prices: Mapping[str, Price] = {} if self.quotas is None else self.quotas.prices
        try:
            report = build_report(rows, query, prices)
        except ReportTooLarge as exc:
            raise HTTPException(422, str(exc)) from exc
        if wants_csv(params.format, request.headers.get("accept", "")):
            filename = f"usage-{query.period}-{query.since}-{query.until}.csv"
            disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
            return Response(report_csv(report), media_type=MEDIA_TYPE, headers=disposition)
        quotas = await self._quotas(report, admin)
        return JSONResponse(UsageReport.of(report, quotas).body())

    async def _quotas(self, report: Report, admin: str) -> list[QuotaReport]:
        """The quotas of the report's keys and tenants that have any, in their current
        periods: read exactly as the quota routes read them."""
        if self.quotas is None:
            return []
        routes = QuotaRoutes(store=self.store, quotas=self.quotas)
        found = []
        for scope, owner in quota_owners(report):
            if scope == "key":
                try:
                    answer = await routes.key_quota(owner, admin)
                except KeyNotFound:  # a JWT subject: its quotas come with its tokens
                    continue
            else:
                answer = await routes.tenant_quota(owner, admin)
            if answer.quotas:
                found.append(answer)
        return found


def report_query(params: ReportParams, today: date) -> ReportQuery:
    """The query PARAMS ask for, open ends made concrete; a 422 naming the parameter
    for what the schema alone cannot refuse."""
    group_by = tuple(dict.fromkeys(name.strip() for name in params.group_by.split(",")))
    group_by = tuple(name for name in group_by if name)
    unknown = [name for name in group_by if name not in GROUPS]
    if unknown:
        _refuse("group_by", f"unknown group {unknown[0]!r}: use key, tenant and model")
    until = params.until or today
    since = params.since or default_since(until, params.period)
    if since > until:
        _refuse("since", "must not be after until")
    if (until - since).days + 1 > MAX_DAYS[params.period]:
        days = MAX_DAYS[params.period]
        _refuse("since", f"since..until covers more than {days} days (period {params.period})")
    return ReportQuery(
        group_by, params.period, since, until, params.tenant, params.key, params.model
    )


def default_since(until: date, period: str) -> date:
    """30 days ending on UNTIL, or the 12 calendar months ending with UNTIL's month."""
    if period == "day":
        return until - timedelta(days=29) if until > date.min + timedelta(days=29) else date.min
    months = until.year * 12 + until.month - 1 - 11
    return date(months // 12, months % 12 + 1, 1) if months >= 12 else date.min


def wants_csv(given: str | None, accept: str) -> bool:
    """`format` decides; without it, whichever of JSON and CSV `Accept` names first."""
    if given is not None:
        return given == "csv"
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("application/json", "text/csv"):
            return media == "text/csv"
    return False


def quota_owners(report: Report) -> list[tuple[str, str]]:
    """("key", id) and ("tenant", name) pairs the report groups by, most tokens first."""
    tokens: dict[tuple[str, str], int] = {}
    for key, totals in report.lines:
        used = totals.counts.prompt_tokens + totals.counts.completion_tokens
        for owner in (("key", key.key_id), ("tenant", key.tenant)):
            if owner[1] is not None:
                slot = (owner[0], owner[1])
                tokens[slot] = tokens.get(slot, 0) + used
    ranked = sorted(tokens, key=lambda owner: (-tokens[owner], owner))
    return ranked[:MAX_QUOTA_OWNERS]


def _refuse(param: str, message: str) -> NoReturn:
    # The same 422 as FastAPI's own validation: the handler names `param`.
    raise RequestValidationError([{"loc": ("query", param), "msg": message, "type": "value_error"}])
