"""Which model serves a request: the one named, or the first able one of an alias's.

An alias (settings `aliases: {name: [model, ...]}`) is a name a caller may send in
`model` that stands for configured models, tried in order. A model can take a
request when it has a usable replica (health checks pass, not ejected, not
draining) and its replicas are not all shedding load (each waiting above
`upstreams.load.shed_waiting_above`). The first model that can serves the request
as if it had been called by name: its pool, its limits, its usage, its metrics
label, and its name in the body sent to vLLM (which refuses names it does not
serve). The choice is made once, before admission: a request that then fails on
the chosen model's replicas is retried among those replicas only.

When no model of an alias can take the request, the caller gets what a single
model would give, naming the alias: the shedding refusal if any model was
shedding, else "no healthy replica" (503).

Settings refuse an alias named like a configured model or naming an alias; a name
that only a replica reports (a LoRA adapter) loses to an alias of the same name,
since the alias is the operator's explicit word.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import orjson

from gateway.errors import GatewayError, ModelBusy, ModelOverloaded, NoHealthyReplica
from gateway.proxy.request_edit import EditedRequest
from gateway.upstreams.pool import Pool, Pools

# On every forwarded answer: the model that served it, whatever name was called.
SERVED_HEADER = b"x-gateway-model"


@dataclass(frozen=True, slots=True)
class Shedding:
    """Refuse at once when every replica has more than `waiting_above` requests waiting."""

    waiting_above: int | None = None
    status: int = HTTPStatus.SERVICE_UNAVAILABLE
    retry_after: int = 2


class ModelRouter:
    """The names a caller may send in `model`, and the pool that serves each now."""

    def __init__(
        self, pools: Pools, aliases: Mapping[str, Sequence[str]], shedding: Shedding
    ) -> None:
        self._pools = pools
        self._aliases = {name: tuple(targets) for name, targets in aliases.items()}
        self._shedding = shedding
        self._served_headers: dict[str, tuple[bytes, bytes]] = {}

    @property
    def names(self) -> list[str]:
        """The models (`Pools.models`), then the aliases."""
        return list(dict.fromkeys([*self._pools.models, *self._aliases]))

    def is_alias(self, name: str) -> bool:
        return name in self._aliases

    def check(self, name: str) -> None:
        """Refuse a name that is neither an alias nor a model (ModelNotFound, 404)."""
        if name not in self._aliases:
            self._pools.get(name)

    def choose(self, name: str) -> Pool:
        """The pool to serve NAME now, or the refusal a single model would give."""
        targets = self._aliases.get(name)
        if targets is None:
            pool = self._pools.get(name)
            if self._sheds(pool):
                raise self._shed_error(name)
            # No usable replica: the pick refuses it, as it always has.
            return pool
        shedding = False
        for target in targets:
            pool = self._pools.get(target)
            if not pool.has_usable(()):
                continue
            if self._sheds(pool):
                shedding = True
                continue
            return pool
        if shedding:
            raise self._shed_error(name)
        raise NoHealthyReplica(
            f"No healthy replica is serving model '{name}' right now.",
            headers={"retry-after": "1"},
        )

    def served_header(self, model: str) -> tuple[bytes, bytes]:
        """`x-gateway-model: MODEL`; percent-encoded unless MODEL is printable ASCII
        (a header value is bytes, and a replica may report any name)."""
        header = self._served_headers.get(model)
        if header is None:
            value = model if model.isascii() and model.isprintable() else quote(model)
            header = self._served_headers[model] = (SERVED_HEADER, value.encode())
        return header

    def _sheds(self, pool: Pool) -> bool:
        threshold = self._shedding.waiting_above
        return threshold is not None and pool.all_waiting_above(threshold)

    def _shed_error(self, name: str) -> GatewayError:
        message = (
            f"Every replica of model '{name}' has more than {self._shedding.waiting_above} "
            "requests waiting; try again shortly."
        )
        headers = {"retry-after": str(self._shedding.retry_after)}
        if self._shedding.status == HTTPStatus.TOO_MANY_REQUESTS:
            return ModelBusy(message, headers=headers)
        return ModelOverloaded(message, headers=headers)


def retarget(edited: EditedRequest, payload: dict[str, Any], served: str) -> EditedRequest:
    """The body with SERVED in `model`. PAYLOAD is the body as edited so far (the edits
    change it in place); a request that called SERVED by name keeps its bytes."""
    if payload["model"] == served:
        return edited
    payload["model"] = served
    return replace(edited, body=orjson.dumps(payload))
