"""The two admissions a forwarded request passes, in one place: the period quotas
(reserve, then settle) and the per-minute limits (admit, then finish).

Quotas go first, so a request the minute limits refuse gives its quota
reservation back (it counts as no request); both answers' headers go on the
response.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.limits.admission import Admissions, Ticket
from gateway.limits.quota_admission import QuotaAdmissions, QuotaTicket
from gateway.principal import Principal
from gateway.proxy.request_edit import EditedRequest


@dataclass(slots=True)
class Admitted:
    ticket: Ticket
    quota: QuotaTicket


class AdmissionGate:
    def __init__(self, limits: Admissions, quotas: QuotaAdmissions | None) -> None:
        self._limits = limits
        self._quotas = quotas

    async def admit(self, principal: Principal, model: str, edited: EditedRequest) -> Admitted:
        """Raises RateLimited or QuotaExceeded (429), or LimiterUnavailable (503)."""
        quotas = self._quotas
        quota = QuotaTicket(None)
        if quotas is not None:
            estimate = edited.prompt_estimate, edited.completion_reserve
            quota = await quotas.admit(principal, model, *estimate)
        try:
            ticket = await self._limits.admit(principal, model, edited.token_estimate)
        except BaseException:
            if quotas is not None:
                await quotas.cancel(quota)
            raise
        if quota.headers:
            ticket.headers = ticket.headers + quota.headers
        return Admitted(ticket, quota)

    async def finish(
        self,
        admitted: Admitted,
        model: str,
        tokens: int | None,
        usage: tuple[int, int] | None,
    ) -> None:
        """Settle the limits to TOKENS and the quotas to USAGE (prompt, completion);
        None keeps the reservation of each."""
        await self._limits.finish(admitted.ticket, tokens)
        if self._quotas is not None:
            await self._quotas.finish(admitted.quota, model, usage)
