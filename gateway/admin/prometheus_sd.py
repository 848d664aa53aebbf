"""The admin API's route for Prometheus' HTTP service discovery of the replicas
(the list itself: `gateway/upstreams/scrape_targets.py`). Admins and the
`metrics.token` may read it (see `gateway/admin/auth.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.admin.keys import Admin
from gateway.upstreams.pool import Pools
from gateway.upstreams.scrape_targets import TARGETS_PATH, target_groups


class TargetGroup(BaseModel):
    """One entry of Prometheus' HTTP SD list."""

    targets: list[str]
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class PrometheusTargetRoutes:
    """The handler, bound to the gateway's pools (None: a gateway without any)."""

    pools: Pools | None

    def router(self) -> APIRouter:
        router = APIRouter(tags=["prometheus"])
        router.add_api_route(TARGETS_PATH, self.targets, methods=["GET"])
        return router

    async def targets(self, admin: Admin) -> list[TargetGroup]:
        """Every replica of every configured model as a Prometheus HTTP SD target group,
        labelled with its model and source. Admins and the `metrics.token` may read it."""
        return [TargetGroup.model_validate(group) for group in target_groups(self.pools)]
