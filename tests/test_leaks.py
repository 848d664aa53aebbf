"""What the gateway must not tell: replica addresses, URL credentials, other tenants'
names, models a key may not use, a client's id to the engine, forged log lines.

Real gateways and simulators; each test asserts the leak is closed and that the
detail still reaches the operator's log where it belongs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.probes import Trust
from tests.servers import (
    TEST_PEPPER,
    Process,
    create_key,
    free_port,
    gateway_config,
    run_gateway,
    run_simulator,
)

MODEL = "sim-model"
SECRET_PASSWORD = "s3cret-url-password"
METRICS_TOKEN = "metrics-token-for-leak-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-leak-tests-0123456789"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Leaky:
    gateway: Process
    # The same gateway's settings with `metrics.trust_loopback: false`: every peer of it,
    # these tests included, is an outsider unless it shows the metrics token.
    guarded: Process
    sim: Process
    keyed_sim: Process
    dead_port: int
    key: str
    limited_key: str

    def post(
        self, body: dict[str, object], key: str | None = None, **headers: str
    ) -> httpx.Response:
        headers["Authorization"] = f"Bearer {key or self.key}"
        url = f"{self.gateway.url}/v1/chat/completions"
        return httpx.post(url, json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def leaky(module_tmp: Path) -> Iterator[Leaky]:
    dead_port = free_port()
    with (
        run_simulator(module_tmp) as sim,
        run_simulator(
            module_tmp, "--api-key", "the-right-key-0123456789", model="refusing"
        ) as keyed,
    ):
        config = gateway_config(free_port(), {}, timeouts={"first_byte": 1, "idle": 1})
        credentials = f"http://user:{SECRET_PASSWORD}@127.0.0.1"
        config["models"] = [
            {"name": MODEL, "replicas": [{"url": f"{credentials}:{sim.port}"}]},
            {"name": "open", "replicas": [{"url": sim.url}]},
            {"name": "down-model", "replicas": [{"url": f"{credentials}:{dead_port}"}]},
            {"name": "refusing", "replicas": [{"url": keyed.url, "api_key": "a-wrong-key-987654"}]},
        ]
        config["metrics"] = {"token": METRICS_TOKEN}
        config["admin"] = {"tokens": [ADMIN_TOKEN]}
        config["auth"] = {
            "pepper": TEST_PEPPER,
            "key_store": {"sqlite_path": str(module_tmp / "leaky-keys.db")},
        }
        key = create_key(config)
        limited = create_key(config, models=frozenset({MODEL}))
        guarded_config = {
            **config,
            "listen": {"host": "127.0.0.1", "port": free_port()},
            "metrics": {"token": METRICS_TOKEN, "trust_loopback": False},
        }
        with (
            run_gateway(module_tmp, config) as gateway,
            run_gateway(module_tmp, guarded_config) as guarded,
        ):
            yield Leaky(gateway, guarded, sim, keyed, dead_port, key, limited)


def replica_addresses(leaky: Leaky) -> list[str]:
    return [f":{leaky.sim.port}", f":{leaky.keyed_sim.port}", f":{leaky.dead_port}", "127.0.0.1"]


def assert_names_no_replica(text: str, leaky: Leaky) -> None:
    for address in replica_addresses(leaky):
        assert address not in text, text
    assert SECRET_PASSWORD not in text


def stream_error(response: httpx.Response) -> str:
    events = [event for event in response.text.split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    message: str = json.loads(events[-2].removeprefix("data: "))["error"]["message"]
    return message


def test_client_errors_name_no_replica(leaky: Leaky) -> None:
    unreachable = leaky.post({"model": "down-model", **CHAT})
    assert unreachable.status_code in (502, 503), unreachable.text
    assert_names_no_replica(unreachable.text, leaky)

    timed_out = leaky.post({"model": MODEL, **CHAT}, **{"x-sim-stall-ms": "3000"})
    assert timed_out.status_code == 504
    assert_names_no_replica(timed_out.text, leaky)
    assert timed_out.headers["x-request-id"] in timed_out.json()["error"]["message"]

    stream = {"model": MODEL, **CHAT, "stream": True}
    dropped = leaky.post(stream, **{"x-sim-drop-after": "2"})
    assert "interrupted" in stream_error(dropped)
    assert dropped.headers["x-request-id"] in stream_error(dropped)
    assert_names_no_replica(stream_error(dropped), leaky)

    quiet = leaky.post(stream, **{"x-sim-itl-ms": "3000"})
    assert "interrupted" in stream_error(quiet)
    assert_names_no_replica(stream_error(quiet), leaky)

    refused = leaky.post({"model": "refusing", **CHAT})
    assert refused.status_code == 502
    assert_names_no_replica(refused.text, leaky)
    # The operator learns which replica and why.
    time.sleep(0.3)
    log = leaky.gateway.log()
    refusal = [line for line in log.splitlines() if "refused the gateway's API key" in line]
    assert refusal and f"127.0.0.1:{leaky.keyed_sim.port}" in refusal[0]
    assert f"127.0.0.1:{leaky.sim.port}" in log


def test_url_credentials_are_never_shown(leaky: Leaky) -> None:
    assert leaky.post({"model": MODEL, **CHAT}).status_code == 200
    leaky.post({"model": "down-model", **CHAT})
    metrics = httpx.get(f"{leaky.gateway.url}/metrics").text
    assert f'replica="http://127.0.0.1:{leaky.sim.port}"' in metrics
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    upstreams = httpx.get(f"{leaky.gateway.url}/admin/v1/upstreams", headers=admin)
    assert upstreams.status_code == 200
    ready = httpx.get(f"{leaky.gateway.url}/readyz")
    time.sleep(0.3)
    for text in (metrics, upstreams.text, ready.text, leaky.gateway.log()):
        assert SECRET_PASSWORD not in text
        assert "user:" not in text


@pytest.mark.parametrize(
    ("client", "trusted"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000), True),
        (("::ffff:127.0.0.1", 5000), True),
        (("192.0.2.7", 5000), False),
        (("::ffff:192.0.2.7", 5000), False),
        (("2001:db8::7", 5000), False),
        (("not-an-address", 5000), False),
        (None, False),
    ],
)
def test_only_loopback_peers_are_trusted_without_the_token(
    client: tuple[str, int] | None, trusted: bool
) -> None:
    scope = {"client": client, "headers": []}
    assert Trust(METRICS_TOKEN, loopback=True)(scope) is trusted
    assert Trust(METRICS_TOKEN, loopback=False)(scope) is False
    with_token = {**scope, "headers": [(b"authorization", f"Bearer {METRICS_TOKEN}".encode())]}
    assert Trust(METRICS_TOKEN, loopback=False)(with_token) is True
    assert Trust(None, loopback=False)(with_token) is False


def test_metrics_are_for_loopback_or_the_token_only(leaky: Leaky) -> None:
    outside = leaky.guarded.url
    unknown = httpx.get(f"{outside}/no-such-route")
    anonymous = httpx.get(f"{outside}/metrics")
    wrong = httpx.get(f"{outside}/metrics", headers={"Authorization": "Bearer nope"})
    for refused in (anonymous, wrong):
        assert refused.status_code == unknown.status_code == 404
        as_unknown = unknown.json()
        as_unknown["error"]["message"] = as_unknown["error"]["message"].replace(
            "/no-such-route", "/metrics"
        )
        assert refused.json() == as_unknown
        assert "tenant" not in refused.text and MODEL not in refused.text
    token = httpx.get(f"{outside}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert token.status_code == 200 and "gateway_requests_total" in token.text
    assert "gateway_requests_total" in httpx.get(f"{leaky.gateway.url}/metrics").text


def test_readyz_shows_states_and_names_models_only_to_trusted_callers(leaky: Leaky) -> None:
    outside = leaky.guarded.url
    deadline = time.monotonic() + 10
    while (anonymous := httpx.get(f"{outside}/readyz")).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert anonymous.json()["checks"] == {"key_store": "ok", "models": "unavailable"}
    for model in (MODEL, "open", "down-model", "refusing"):
        assert model not in anonymous.text
    trusted = httpx.get(f"{outside}/readyz", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    checks = trusted.json()["checks"]
    assert checks["model down-model"] == "unavailable" and checks[f"model {MODEL}"] == "ok"
    assert set(checks.values()) <= {"ok", "unavailable"}


def test_readyz_keeps_the_reason_for_the_log(module_tmp: Path, leaky: Leaky) -> None:
    dead_redis = free_port()
    config = gateway_config(free_port(), {MODEL: [leaky.sim.url]})
    config["limits"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{dead_redis}/0"}
    with run_gateway(module_tmp, config) as gateway:
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["limits"] == "unavailable"
        assert str(dead_redis) not in ready.text
        time.sleep(0.3)
        assert "readiness: the limits backend is unavailable" in gateway.log()


def test_a_model_the_key_may_not_use_is_as_missing_as_a_made_up_one(leaky: Leaky) -> None:
    assert leaky.post({"model": MODEL, **CHAT}, key=leaky.limited_key).status_code == 200
    forbidden = leaky.post({"model": "open", **CHAT}, key=leaky.limited_key)
    made_up = leaky.post({"model": "no-such-model", **CHAT}, key=leaky.limited_key)
    assert forbidden.status_code == made_up.status_code == 404
    as_missing = made_up.json()
    as_missing["error"]["message"] = as_missing["error"]["message"].replace("no-such-model", "open")
    assert forbidden.json() == as_missing


def test_the_gateway_mints_the_id_the_engine_sees(leaky: Leaky) -> None:
    answer = leaky.post({"model": MODEL, **CHAT}, **{"X-Request-Id": "client-rid-42"})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "client-rid-42"
    # The simulator, like vLLM, names its answer after the request id it received.
    engine_id = answer.json()["id"]
    assert "client-rid-42" not in engine_id
    minted = re.fullmatch(r"chatcmpl-([0-9a-f]{32})", engine_id)
    assert minted is not None, engine_id
    time.sleep(0.5)
    (line,) = [line for line in leaky.gateway.log().splitlines() if "client-rid-42" in line]
    logged = json.loads(line)
    assert (logged["client_request_id"], logged["request_id"]) == ("client-rid-42", minted[1])


def test_text_logs_cannot_be_forged(module_tmp: Path, leaky: Leaky) -> None:
    config = gateway_config(free_port(), {MODEL: [leaky.sim.url]})
    config["log"] = {"level": "info", "format": "text"}
    with run_gateway(module_tmp, config) as gateway:
        headers = gateway.auth
        path = httpx.post(f"{gateway.url}/v1/chat/completions%0aforged=line", headers=headers)
        assert path.status_code == 404
        body = {"model": "a\nforged model", **CHAT}
        model = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
        assert model.status_code == 404
        time.sleep(0.5)
        log = gateway.log()
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("forged")]
    assert any('"/v1/chat/completions\\nforged=line"' in line for line in lines)
    assert any('"a\\nforged model"' in line for line in lines)
