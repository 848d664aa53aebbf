"""The usage report's query and its JSON body (`GET /admin/v1/usage/report`).

The body's shape is a contract: the admin web UI draws its charts from it. Add
fields; never rename or remove one.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from gateway.admin.quota_schemas import QuotaReport
from gateway.admin.schemas import TEXT_PATTERN, Model, Tenant
from gateway.usage.report import LineKey, LineTotals, Report, usd

_GROUP = "(key|tenant|model)"
GROUP_BY_PATTERN = rf"^({_GROUP}(,{_GROUP})*)?$"
# A key id, or a JWT subject: usage names whichever principal made the request.
Principal = Annotated[str, Field(min_length=1, max_length=256, pattern=TEXT_PATTERN)]


class ReportParams(BaseModel):
    """The query of a usage report. Days and months are UTC."""

    group_by: str = Field(
        default="tenant,model",
        max_length=64,
        # Written into the schema, checked by the route: its 422 names the unknown group.
        json_schema_extra={"pattern": GROUP_BY_PATTERN},
        description="A comma list of `key`, `tenant` and `model`, in the order lines sort "
        "by; empty: one line per period.",
    )
    period: Literal["day", "month"] = Field(
        default="day", description="Lines per UTC day, or per calendar month (UTC)."
    )
    since: date | None = Field(
        default=None,
        description="The first UTC day counted. Default: 29 days before `until` (period "
        "day), or the first day of the month 11 months before (period month).",
    )
    until: date | None = Field(
        default=None, description="The last UTC day counted, itself included. Default: today."
    )
    tenant: Tenant | None = Field(default=None, description="Only this tenant's usage.")
    key: Principal | None = Field(
        default=None, description="Only this key's usage (its id), or a JWT subject's."
    )
    model: Model | None = Field(default=None, description="Only this model's usage.")
    format: Literal["json", "csv"] | None = Field(
        default=None, description="Default: csv when `Accept` names text/csv, else json."
    )


class ReportTotalsOut(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_requests: int = Field(
        description="Requests whose tokens are the gateway's reservation: the replica "
        "reported no usage (a client that left mid-stream, say)."
    )
    cost_usd: str = Field(
        description="USD with six decimals, as a string so that it is exact: whole "
        "micro-dollars, each stored day's row rounded up, summed."
    )
    cost_micro_usd: int = Field(description="The same cost in micro-dollars (USD 10^-6).")

    @classmethod
    def of(cls, totals: LineTotals) -> ReportTotalsOut:
        counts = totals.counts
        return cls(
            requests=counts.requests,
            prompt_tokens=counts.prompt_tokens,
            completion_tokens=counts.completion_tokens,
            total_tokens=counts.prompt_tokens + counts.completion_tokens,
            estimated_requests=counts.estimated_requests,
            cost_usd=usd(totals.cost),
            cost_micro_usd=totals.cost,
        )


class _LineGroups(BaseModel):
    period: str = Field(description="`2026-12-07` (period day) or `2026-12` (period month).")
    key_id: str | None = Field(default=None, description="The key's id, or a JWT subject.")
    tenant: str | None = None
    model: str | None = None


# The bases in this order put the period and groups first in the JSON.
class ReportLineOut(ReportTotalsOut, _LineGroups):
    """One period and group. `key_id`, `tenant` and `model` are present only when grouped by."""

    @classmethod
    def line(cls, key: LineKey, totals: LineTotals) -> ReportLineOut:
        totals_out = ReportTotalsOut.of(totals)
        groups = {"key_id": key.key_id, "tenant": key.tenant, "model": key.model}
        given = {name: value for name, value in groups.items() if value is not None}
        return cls.model_validate({"period": key.period, **given, **totals_out.model_dump()})


class UsageReport(BaseModel):
    """Usage per period and group over UTC days `since` to `until`, with its cost; and,
    when grouped by key or tenant, where their quotas stand in the current periods."""

    object: Literal["report"] = "report"
    period: str
    since: date
    until: date
    group_by: list[str]
    data: list[ReportLineOut]
    total: ReportTotalsOut
    quotas: list[QuotaReport] = Field(
        description="The quotas of the report's keys and tenants (those with any), in "
        "their current day and month; empty unless grouped by key or tenant."
    )

    @classmethod
    def of(cls, report: Report, quotas: list[QuotaReport]) -> UsageReport:
        query = report.query
        return cls(
            period=query.period,
            since=query.since,
            until=query.until,
            group_by=list(query.group_by),
            data=[ReportLineOut.line(key, totals) for key, totals in report.lines],
            total=ReportTotalsOut.of(report.total),
            quotas=quotas,
        )

    def body(self) -> dict[str, Any]:
        """The JSON body: a line's groups appear only when the report is grouped by them."""
        body = self.model_dump(mode="json")
        body["data"] = [line.model_dump(mode="json", exclude_unset=True) for line in self.data]
        return body
