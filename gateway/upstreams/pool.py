"""Pools of replicas per model, each replica's state, and the pick.

A replica is picked only when it is usable: its health checks pass (or it is
a configured one not yet checked), it has not been ejected for failing
requests, and it is not draining (gone from discovery: its requests in flight
finish, it gets no new ones). The pick is the usable replica with the fewest
requests in flight from this gateway; with load-aware picking, the waiting
queue the replica itself reports (other clients' load included) counts too,
and its KV-cache use breaks ties.

A request with an affinity key (gateway.proxy.affinity: its conversation) goes
instead to the replica that ranks first for that key, by rendezvous hashing: each
replica's weight for a key is a hash of the key and the replica's URL, so every
gateway process ranks the replicas alike with nothing shared, and a replica that
joins or leaves moves only the keys it wins or held. The load stays bounded: a
replica serves the key only while its requests in flight are below
`ceil(max_load * (all in flight + 1) / usable replicas)`; past that, the next one
in the ranking does. Some replica is always below that bound.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from yarl import URL

from gateway.errors import ModelNotFound, NoHealthyReplica


@dataclass(frozen=True, slots=True)
class Load:
    """A replica's own gauges (vLLM's `/metrics`), and when they were read."""

    waiting: float
    running: float
    kv_cache: float | None
    at: float


@dataclass(eq=False)
class Replica:
    """One vLLM server. `authorization` is the header value the gateway sends it."""

    url: str
    authorization: str | None = field(default=None, repr=False)
    source: str = "static"
    outstanding: int = 0
    # Health checks: None until the first one; discovered replicas wait for it.
    healthy: bool | None = None
    ejected: bool = False
    draining: bool = False
    failures: int = 0
    check_streak: int = 0  # > 0: consecutive passes; < 0: consecutive failures
    last_check: float | None = None
    load: Load | None = None
    models: frozenset[str] = frozenset()
    _urls: dict[str, URL] = field(default_factory=dict, repr=False)
    # The replica's part in its rendezvous weights: the same in every gateway process.
    salt: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.blake2b(self.url.encode(), digest_size=8).digest()
        self.salt = int.from_bytes(digest, "big")

    @property
    def usable(self) -> bool:
        if self.ejected or self.draining:
            return False
        return self.healthy is not False if self.source == "static" else self.healthy is True

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        if self.ejected:
            return "ejected"
        if self.healthy is None:
            return "unchecked" if self.source == "static" else "joining"
        return "healthy" if self.healthy else "unhealthy"

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

    def request_failed(self, eject_after: int, *, may_eject: bool = True) -> bool:
        """A connection failure, timeout or 5xx; True when this one ejects the replica.

        MAY_EJECT is False for a pool's last usable replica: ejecting it would turn
        its errors into refusals for every request (health checks still judge it).
        """
        self.failures += 1
        if self.failures >= eject_after and not self.ejected and may_eject:
            self.ejected = True
            return True
        return False

    def request_succeeded(self) -> None:
        self.failures = 0

    def check_passed(self, threshold: int, now: float) -> bool:
        """True when this pass brings the replica (back) in."""
        self.last_check = now
        self.check_streak = max(self.check_streak, 0) + 1
        if self.check_streak >= threshold and (self.healthy is not True or self.ejected):
            self.healthy, self.ejected, self.failures = True, False, 0
            return True
        return False

    def check_failed(self, threshold: int, now: float) -> bool:
        """True when this failure takes the replica out."""
        self.last_check = now
        self.check_streak = min(self.check_streak, 0) - 1
        if -self.check_streak >= threshold and self.healthy is not False:
            self.healthy = False
            return True
        return False


@dataclass(frozen=True, slots=True)
class PickPolicy:
    load_aware: bool = False
    # Load readings older than this are ignored (the replica stopped answering /metrics).
    load_max_age: float = 6.0
    clock: Callable[[], float] = time.monotonic
    # An affinity key's replica keeps it below this many times the mean load.
    max_load: float = 1.5


class Pool:
    def __init__(self, model: str, replicas: Iterable[Replica], policy: PickPolicy) -> None:
        self.model = model
        self.replicas = list(replicas)
        self.policy = policy
        # Rotates the starting point so ties between idle replicas spread out.
        self._turn = itertools.count()

    def pick(self, exclude: Iterable[Replica] = ()) -> Replica:
        """The least busy usable replica, EXCLUDE left out (`pick_for`: by affinity key)."""
        candidates = self._candidates(set(exclude))
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        if not self.policy.load_aware:
            return min(rotated, key=lambda replica: replica.outstanding)
        now = self.policy.clock()
        return min(rotated, key=lambda replica: self._score(replica, now))

    def pick_for(self, key: int, exclude: Iterable[Replica] = ()) -> tuple[Replica, bool]:
        """The replica for affinity KEY, and whether it is the key's first choice: the
        highest-ranked usable replica, none excluded, under the bound."""
        excluded = set(exclude)
        replica, first = self._keyed(self._candidates(excluded), key)
        return replica, first and not excluded

    def ranking(self, key: int, replicas: Iterable[Replica] | None = None) -> list[Replica]:
        """REPLICAS (the pool's, by default) from the highest weight for KEY down."""
        given = self.replicas if replicas is None else replicas
        return sorted(given, key=lambda replica: _weight(key, replica.salt), reverse=True)

    def _candidates(self, excluded: set[Replica]) -> list[Replica]:
        candidates = [r for r in self.replicas if r.usable and r not in excluded]
        if not candidates:
            raise NoHealthyReplica(
                f"No healthy replica is serving model '{self.model}' right now.",
                headers={"retry-after": "1"},
            )
        return candidates

    def _keyed(self, candidates: list[Replica], key: int) -> tuple[Replica, bool]:
        total = sum(replica.outstanding for replica in candidates)
        bound = math.ceil(self.policy.max_load * (total + 1) / len(candidates))
        ranked = self.ranking(key, candidates)
        for replica in ranked:
            if replica.outstanding < bound:
                return replica, replica is ranked[0]
        return ranked[0], True  # never: some replica is always under the bound

    def request_failed(self, replica: Replica, eject_after: int) -> bool:
        """A failed request of REPLICA; True when it ejects the replica. Never the last
        usable one: ejecting it would turn its errors into refusals for every request."""
        return replica.request_failed(eject_after, may_eject=self.has_usable(exclude=[replica]))

    def has_usable(self, exclude: Iterable[Replica]) -> bool:
        excluded = set(exclude)
        return any(r.usable and r not in excluded for r in self.replicas)

    def _score(self, replica: Replica, now: float) -> float:
        load = self.fresh_load(replica, now)
        if load is None:
            return replica.outstanding
        # The queue counts whole requests; KV-cache use (0-1) only breaks ties.
        return replica.outstanding + load.waiting + (load.kv_cache or 0.0)

    def fresh_load(self, replica: Replica, now: float) -> Load | None:
        load = replica.load
        if load is None or now - load.at > self.policy.load_max_age:
            return None
        return load

    def all_waiting_above(self, threshold: int) -> bool:
        """Every usable replica reports a fresh waiting queue longer than THRESHOLD."""
        now = self.policy.clock()
        usable = [replica for replica in self.replicas if replica.usable]
        loads = [self.fresh_load(replica, now) for replica in usable]
        return bool(usable) and all(load is not None and load.waiting > threshold for load in loads)

    def update(self, source: str, urls: Iterable[str], authorization: str | None) -> None:
        """SOURCE now sees URLS: new ones join (after a health check), missing ones drain."""
        wanted = dict.fromkeys(urls)
        mine = {r.url: r for r in self.replicas if r.source == source}
        for url, replica in mine.items():
            replica.draining = url not in wanted
        for url in wanted:
            if url not in mine:
                self.replicas.append(Replica(url, authorization, source=source))
        self.remove_drained()

    def remove_drained(self) -> None:
        self.replicas = [r for r in self.replicas if not (r.draining and r.outstanding == 0)]


_MASK = (1 << 64) - 1


def _weight(key: int, salt: int) -> int:
    """A replica's rendezvous weight for a key: SplitMix64's finaliser of the two
    mixed, so each replica's weights are as good as independent draws."""
    mixed = (key ^ salt) & _MASK
    mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK
    return mixed ^ (mixed >> 31)


class Pools:
    """The models this gateway serves: its configured pools, in configuration order, and
    the models its replicas report serving (such as LoRA adapters)."""

    def __init__(self, pools: Iterable[Pool]) -> None:
        self._pools = {pool.model: pool for pool in pools}
        self._views: dict[str, Pool] = {}

    def get(self, model: str) -> Pool:
        pool = self._pools.get(model)
        if pool is not None:
            return pool
        serving = [r for r in self.replicas() if model in r.models]
        if not serving:
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        view = self._views.get(model)
        if view is None or view.replicas != serving:
            policy = next(iter(self._pools.values())).policy
            view = self._views[model] = Pool(model, serving, policy)
        return view

    def configured(self) -> list[Pool]:
        return list(self._pools.values())

    def replicas(self) -> Iterator[Replica]:
        for pool in self._pools.values():
            yield from pool.replicas

    @property
    def models(self) -> list[str]:
        """Configured models first, then the others usable replicas report."""
        names = dict.fromkeys(self._pools)
        for replica in self.replicas():
            if replica.usable:
                names.update(dict.fromkeys(sorted(replica.models)))
        return list(names)
