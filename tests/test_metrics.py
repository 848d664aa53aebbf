"""`/metrics`, `/healthz`, `/readyz` and the access log of real gateways, and two workers
whose counters add up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import (
    Process,
    RedisServer,
    free_port,
    gateway_config,
    metric,
    run_gateway,
)

MODEL = "sim-model"
ADMIN_TOKEN = "admin-token-for-metrics-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROMPT = [{"role": "user", "content": "Count me"}]


@pytest.fixture(scope="module")
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process, dead_url: str) -> Iterator[Process]:
    config = gateway_config(free_port(), {MODEL: [sim.url], "down-model": [dead_url]})
    config["upstreams"] = {"health": {"interval": 0.3, "unhealthy_threshold": 1, "timeout": 0.5}}
    with run_gateway(module_tmp, config) as process:
        yield process


def sdk(gateway: Process, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key or str(gateway.api_key), max_retries=0
    )


def test_probes(gateway: Process, dead_url: str) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 5
    while True:
        ready = httpx.get(f"{gateway.url}/readyz")
        checks = ready.json()["checks"]
        if checks.get("model down-model") != "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # One model has no usable replica: not ready, and it says which.
    assert ready.status_code == 503
    assert checks == {
        "key_store": "ok",
        f"model {MODEL}": "ok",
        "model down-model": "unavailable",
    }


def test_fleet_readiness_reflects_the_gateway_not_its_models(
    tmp_path: Path, sim: Process, dead_url: str
) -> None:
    """probes.ready_requires_models off: a model without a usable replica stays visible in
    /readyz's body (and gateway_replica_up), and the gateway stays in its Service."""
    config = gateway_config(free_port(), {MODEL: [sim.url], "down-model": [dead_url]})
    config["upstreams"] = {"health": {"interval": 0.3, "unhealthy_threshold": 1, "timeout": 0.5}}
    config["probes"] = {"ready_requires_models": False}
    with run_gateway(tmp_path, config) as gateway:
        deadline = time.monotonic() + 10
        while True:
            ready = httpx.get(f"{gateway.url}/readyz")
            if ready.json()["checks"].get("model down-model") != "ok":
                break
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "checks": {
                "key_store": "ok",
                f"model {MODEL}": "ok",
                "model down-model": "unavailable",
            },
        }
        assert metric(gateway.url, "gateway_replica_up", model="down-model") == 0
        # The model's requests get the gateway's own answer, not a connection error.
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "down-model", "messages": PROMPT, "max_tokens": 2},
            headers=gateway.auth,
            timeout=30,
        )
        assert response.status_code in (502, 503), response.text
        assert "error" in response.json()


def test_counts_match_what_was_done(gateway: Process, sim: Process, dead_url: str) -> None:
    def requests(status: str) -> float:
        return metric(gateway.url, "gateway_requests_total", model=MODEL, status=status)

    def tokens(kind: str) -> float:
        return metric(gateway.url, f"gateway_{kind}_tokens_total", model=MODEL, tenant="tests")

    before = {
        "ok": requests("200"),
        "prompt": tokens("prompt"),
        "completion": tokens("completion"),
        "sim_prompt": metric(sim.url, "vllm:prompt_tokens_total"),
        "sim_generation": metric(sim.url, "vllm:generation_tokens_total"),
        "gaps": metric(gateway.url, "gateway_inter_token_gap_seconds_count", model=MODEL),
    }
    with sdk(gateway) as client, sdk(gateway, "vgw_not_a_real_key") as stranger:
        answer = client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=PROMPT,  # type: ignore[arg-type]
                max_tokens=7,
                stream=True,
                # Tokens 20 ms apart: each arrives in a read of its own.
                extra_headers={"x-sim-itl-ms": "20"},
            )
        )  # type: ignore[arg-type]
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=PROMPT)  # type: ignore[arg-type]
    assert answer.usage is not None and len(chunks) > 7
    assert requests("200") - before["ok"] == 2
    # The simulator's own counters are the truth for the stream (its usage was kept from us).
    sim_prompt = metric(sim.url, "vllm:prompt_tokens_total") - before["sim_prompt"]
    sim_generation = metric(sim.url, "vllm:generation_tokens_total") - before["sim_generation"]
    assert tokens("prompt") - before["prompt"] == sim_prompt
    assert tokens("completion") - before["completion"] == sim_generation == 5 + 7
    # A gap between every two reads: the role event, 7 tokens 20 ms apart, then [DONE].
    assert (
        metric(gateway.url, "gateway_inter_token_gap_seconds_count", model=MODEL) - before["gaps"]
        >= 6
    )
    assert metric(gateway.url, "gateway_requests_total", model="", status="404") >= 1
    assert metric(gateway.url, "gateway_auth_failures_total", reason="malformed") >= 1
    assert metric(gateway.url, "gateway_time_to_first_token_seconds_count", model=MODEL) >= 2
    assert metric(gateway.url, "gateway_overhead_seconds_count") >= 2
    assert metric(gateway.url, "gateway_chunks_total", model=MODEL) >= 8
    assert metric(gateway.url, "gateway_requests_in_flight") == 0
    assert metric(gateway.url, "gateway_open_streams", model=MODEL) == 0
    assert metric(gateway.url, "gateway_replica_up", model=MODEL, replica=sim.url) == 1
    assert metric(gateway.url, "gateway_replica_up", model="down-model", replica=dead_url) == 0
    assert metric(gateway.url, "gateway_upstream_requests_total", model=MODEL, outcome="ok") >= 2
    # vLLM's own metrics are never reachable through the gateway.
    assert "vllm:" not in httpx.get(f"{gateway.url}/metrics").text


def test_the_access_log(gateway: Process) -> None:
    key = str(gateway.api_key)
    headers = {**gateway.auth, "X-Request-Id": "metrics-log-1"}
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        content = response.read()
    deadline = time.monotonic() + 5
    line = None
    while line is None and time.monotonic() < deadline:
        for text in gateway.log().splitlines():
            if '"metrics-log-1"' in text and '"gateway.access"' in text:
                line = json.loads(text)
        time.sleep(0.1)
    assert line is not None
    assert line["principal"] == key.split("_")[1]
    assert line["tenant"] == "tests" and line["model"] == MODEL and line["status"] == 200
    assert line["replica"] and line["bytes"] == len(content)
    assert line["completion_tokens"] == 4 and line["prompt_tokens"] > 0
    assert 0 < line["ttft_ms"] <= line["duration_ms"]
    assert line["client_disconnected"] is False
    assert key not in gateway.log() and key.split("_")[2] not in gateway.log()


def test_metrics_only_on_the_admin_listener(module_tmp: Path, sim: Process) -> None:
    admin_port = free_port()
    config = gateway_config(
        free_port(), {MODEL: [sim.url]}, metrics={"listener": "admin", "key_label": True}
    )
    config["admin"] = {"tokens": [ADMIN_TOKEN], "listen": {"host": "127.0.0.1", "port": admin_port}}
    with run_gateway(module_tmp, config) as gateway:
        assert httpx.get(f"{gateway.url}/metrics").status_code == 404
        sdk(gateway).completions.create(model=MODEL, prompt="hi", max_tokens=2)
        admin = f"http://127.0.0.1:{admin_port}"
        key_id = str(gateway.api_key).split("_")[1]
        assert metric(admin, "gateway_requests_total", key_id=key_id, status="200") == 1


def test_two_workers_add_up(tmp_path: Path, sim: Process) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    pepper = "pepper-for-the-workers-test-0123456789"
    config = gateway_config(free_port(), {MODEL: [sim.url]}, workers=2)
    config["auth"] = {"pepper": pepper, "key_store": {"backend": "redis", "redis_url": redis.url}}
    config["limits"] = {"backend": "redis"}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    try:
        with run_gateway(tmp_path, config) as gateway:
            created = httpx.post(
                f"{gateway.url}/admin/v1/keys",
                json={"tenant": "w", "name": "w"},
                headers=ADMIN,
                timeout=30,
            )
            key = created.json()["key"]
            for _ in range(40):
                # A new connection each time, so both workers get some.
                with httpx.Client() as client:
                    answer = client.post(
                        f"{gateway.url}/v1/completions",
                        json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=30,
                    )
                    assert answer.status_code == 200
            time.sleep(0.5)  # the access log is written in batches
            lines = [
                json.loads(line)
                for line in gateway.log().splitlines()
                if '"gateway.access"' in line
            ]
            # Both workers answered some of them...
            assert len({line["pid"] for line in lines}) == 2
            total = metric(
                gateway.url, "gateway_requests_total", model=MODEL, status="200", tenant="w"
            )
            assert total == 40
            assert metric(sim.url, "sim_http_requests_total", path="/v1/completions") >= 40
    finally:
        redis.stop()
