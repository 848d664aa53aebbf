"""`/v1/models` and `/v1/models/{model}`, answered by the gateway itself: the models and
aliases a caller may use, and nothing else (a model it may not use does not exist for it)."""

from __future__ import annotations

import json
import time

from gateway.errors import ModelNotFound
from gateway.principal import Principal
from gateway.proxy.aliases import ModelRouter


class ModelCatalog:
    def __init__(self, router: ModelRouter) -> None:
        self._router = router
        self._created = int(time.time())

    def listing(self, principal: Principal) -> bytes:
        data = [self._card(name) for name in self._router.names if principal.may_use(name)]
        return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()

    def card(self, model: str, principal: Principal) -> bytes:
        self._router.check(model)
        if not principal.may_use(model):
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return json.dumps(self._card(model), separators=(",", ":")).encode()

    def _card(self, model: str) -> dict[str, object]:
        created = self._created
        return {"id": model, "object": "model", "created": created, "owned_by": "vllm-gateway"}
