"""Which API families a model serves (gateway.proxy.apis), without a process: the
route-to-family table, the defaults, and the refusal a disabled route gets."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.errors import ModelNotFound
from gateway.proxy.apis import DEFAULT, FAMILIES, ModelApis
from gateway.proxy.routes import FORWARDED, Route


def test_every_forwarded_route_that_names_a_model_has_a_family() -> None:
    by_id = {Route.RESPONSE, Route.RESPONSE_CANCEL}  # no model: the creator's replica
    assert set(FAMILIES) == set(FORWARDED) - by_id


def test_a_model_serves_the_default_families_unless_its_settings_say_otherwise() -> None:
    apis = ModelApis.of([("ranker", ["rerank", "embeddings"])])
    for route, family in FAMILIES.items():
        if family in DEFAULT:
            apis.check(route, "chat-model")  # not configured: the defaults
        else:
            with pytest.raises(ModelNotFound):
                apis.check(route, "chat-model")
    apis.check(Route.RERANK, "ranker")
    apis.check(Route.RERANK_V2, "ranker")
    apis.check(Route.EMBEDDINGS, "ranker")
    with pytest.raises(ModelNotFound) as refused:
        apis.check(Route.CHAT, "ranker")
    assert refused.value.message == (
        "The model 'ranker' does not serve /v1/chat/completions through this gateway."
    )
    assert refused.value.param == "model"


def test_the_table_cannot_be_changed_once_built() -> None:
    apis = ModelApis.of([("ranker", ["rerank"])])
    with pytest.raises(dataclasses.FrozenInstanceError):
        apis.served = {}  # type: ignore[misc]
    assert not hasattr(apis, "__dict__")  # slotted: no attribute can be added either
