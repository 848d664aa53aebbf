"""Pools of replicas per model, and the least-outstanding-requests pick."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from yarl import URL

from gateway.errors import ModelNotFound, NoHealthyReplica
from gateway.settings import ModelSettings


@dataclass(eq=False)
class Replica:
    """One vLLM server. `authorization` is the header value the gateway sends it."""

    url: str
    authorization: str | None = field(default=None, repr=False)
    outstanding: int = 0
    healthy: bool = True
    _urls: dict[str, URL] = field(default_factory=dict, repr=False)

    def url_for(self, path: str, query: bytes) -> URL:
        """The upstream URL for a route; parsed once per route, not per request."""
        if query:
            return URL(f"{self.url}{path}?{query.decode('latin-1')}", encoded=True)
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.url + path, encoded=True)
        return url

    @contextmanager
    def lease(self) -> Iterator[Replica]:
        self.outstanding += 1
        try:
            yield self
        finally:
            self.outstanding -= 1


class Pool:
    def __init__(self, model: str, replicas: Iterable[Replica]) -> None:
        self.model = model
        self.replicas = list(replicas)
        # Rotates the starting point so ties between idle replicas spread out.
        self._turn = itertools.count()

    def pick(self) -> Replica:
        candidates = [replica for replica in self.replicas if replica.healthy]
        if not candidates:
            raise NoHealthyReplica(
                f"No healthy replica is serving model '{self.model}' right now.",
                headers={"retry-after": "1"},
            )
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda replica: replica.outstanding)


class Pools:
    """The models this gateway serves, in configuration order."""

    def __init__(self, pools: Iterable[Pool]) -> None:
        self._pools = {pool.model: pool for pool in pools}

    @classmethod
    def from_settings(cls, models: Iterable[ModelSettings]) -> Pools:
        return cls(
            Pool(
                model.name,
                (
                    Replica(
                        replica.url,
                        None
                        if replica.api_key is None
                        else f"Bearer {replica.api_key.get_secret_value()}",
                    )
                    for replica in model.replicas
                ),
            )
            for model in models
        )

    def get(self, model: str) -> Pool:
        pool = self._pools.get(model)
        if pool is None:
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return pool

    @property
    def models(self) -> list[str]:
        return list(self._pools)
