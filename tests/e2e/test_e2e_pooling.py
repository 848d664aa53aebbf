"""vLLM's pooling routes on a real embedding model (all-MiniLM-L6-v2, a bi-encoder), through
the gateway and against the simulator.

vLLM 0.32 serves `/v1/rerank`, `/v2/rerank`, `/v1/score` (cosine similarity
of the two embeddings) and Cohere's `/v2/embed` for an embedding model. The
gateway forwards them for a model whose `apis` name them: its answers are
vLLM's own (ids aside: the gateway mints the request id vLLM builds them
from), and the usage vLLM reports is what the gateway records. The
simulator's answers have the same shapes: keys, key order, JSON types,
content type and id prefix. There is no speech model on this machine, so the
audio routes are tested against the simulator only (tests/test_pooling_routes.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import API_KEY, Server
from tests.e2e.fidelity import shape, shape_differences
from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator

ADMIN_TOKEN = "admin-token-for-pooling-e2e-0123456789"
BODIES: dict[str, dict[str, object]] = {
    "/v1/rerank": {
        "query": "What is a cat?",
        "documents": ["A cat is a small animal.", "The sky is blue.", "Caf\u00e9 au lait"],
        "top_n": 2,
    },
    "/v2/rerank": {"query": "What is a cat?", "documents": ["A cat purrs.", "Rain falls."]},
    "/v1/score": {"text_1": "What is a cat?", "text_2": ["A cat purrs.", "Rain falls."]},
    "/v2/embed": {"texts": ["hello there", "world"], "embedding_types": ["float"]},
}


@pytest.fixture(scope="module")
def pool_gateway(module_tmp: Path, vllm_embed: Server) -> Iterator[Process]:
    config = gateway_config(free_port(), {}, admin={"tokens": [ADMIN_TOKEN]})
    config["models"] = [
        {
            "name": vllm_embed.model,
            "replicas": [{"url": vllm_embed.url, "api_key": API_KEY}],
            "apis": ["embeddings", "rerank", "score", "embed_v2"],
        }
    ]
    with run_gateway(module_tmp, config) as process:
        yield process


@pytest.fixture(scope="module")
def embed_sim(module_tmp: Path, vllm_embed: Server) -> Iterator[Server]:
    with run_simulator(module_tmp, "--api-key", API_KEY, model=vllm_embed.model) as process:
        yield Server(process.url, vllm_embed.model, API_KEY)


def send(url: str, headers: dict[str, str], path: str, model: str) -> httpx.Response:
    body = {"model": model, **BODIES[path]}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=120)


def without_id(value: dict[str, object]) -> dict[str, object]:
    return {key: item for key, item in value.items() if key not in ("id", "created")}


def reported_tokens(answer: dict[str, object]) -> int:
    usage = answer.get("usage")
    if isinstance(usage, dict):
        return int(usage["prompt_tokens"])
    meta = answer["meta"]
    assert isinstance(meta, dict)
    return int(meta["billed_units"]["input_tokens"])


@pytest.mark.parametrize("path", list(BODIES))
def test_the_gateway_answers_as_vllm(pool_gateway: Process, vllm_embed: Server, path: str) -> None:
    through = send(pool_gateway.url, pool_gateway.auth, path, vllm_embed.model)
    direct = send(vllm_embed.url, vllm_embed.headers, path, vllm_embed.model)
    assert through.status_code == direct.status_code == 200, (through.text, direct.text)
    assert without_id(through.json()) == without_id(direct.json())
    assert through.headers["content-type"] == direct.headers["content-type"]


def test_the_usage_vllm_reports_is_recorded(pool_gateway: Process, vllm_embed: Server) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # A tenant of its own: usage is written in batches, so a count read before could be stale.
    created = httpx.post(
        f"{pool_gateway.url}/admin/v1/keys",
        json={"tenant": "pooling", "name": "e2e"},
        headers=admin,
    )
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    reported = sum(
        reported_tokens(send(pool_gateway.url, key, path, vllm_embed.model).json())
        for path in BODIES
    )
    url = f"{pool_gateway.url}/admin/v1/tenants/pooling/usage"
    deadline = time.monotonic() + 10
    while (got := httpx.get(url, headers=admin).json()["models"]).get(vllm_embed.model, {}).get(
        "requests", 0
    ) < len(BODIES):
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    usage = got[vllm_embed.model]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (reported, 0)
    assert usage["estimated_requests"] == 0


@pytest.mark.parametrize("path", list(BODIES))
def test_the_simulator_answers_in_vllms_shape(
    vllm_embed: Server, embed_sim: Server, path: str
) -> None:
    real, fake = (send(s.url, s.headers, path, s.model) for s in (vllm_embed, embed_sim))
    assert real.status_code == fake.status_code == 200, (real.text, fake.text)
    assert shape_differences(shape(real.json()), shape(fake.json())) == []
    assert real.headers["content-type"] == fake.headers["content-type"]
    assert str(real.json()["id"]).split("-")[0] == str(fake.json()["id"]).split("-")[0]
    assert real.json().get("model") == fake.json().get("model")
