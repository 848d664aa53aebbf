"""Only the allowlisted routes reach a replica; every refusal is an OpenAI-shaped error."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import MethodNotAllowed, RouteNotFound
from gateway.proxy.routes import Route, match_route
from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator

MODEL = "sim-model"
REPLICA_KEY = "replica-secret-0123456789"

UNGUARDED = [
    "/invocations",
    "/tokenize",
    "/detokenize",
    "/pooling",
    "/score",
    "/rerank",
    "/classify",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/version",
    "/health",
    "/ping",
    "/load",
    "/v1/responses/resp_x/input_items",
    "/v1/messages/batches",
    "/v1/load_lora_adapter",
    "/start_profile",
    "/sleep",
    "/collective_rpc",
    "/reset_prefix_cache",
    "/server_info",
]
TRICKS = [
    "/v1/chat/completions/../../tokenize",
    "/v1/../tokenize",
    "//tokenize",
    "/v1//chat/completions",
    "/%2e%2e/tokenize",
    "/v1/%2e%2e/tokenize",
    "/v1/chat/completions/%2e%2e/%2e%2e/invocations",
    "/v1%2fchat%2fcompletions",
    "/v1/chat/completions%2f..%2f..%2ftokenize",
    "/%74okenize",
    "/v1/chat/completions/",
    "/v1/messages/",
    "/v1/messages/count_tokens/../../../tokenize",
    "/V1/chat/completions",
]


# The matcher alone first: these run in microseconds, before any process starts.


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", b"/v1/chat/completions", Route.CHAT),
        ("POST", b"/v1/completions", Route.COMPLETIONS),
        ("POST", b"/v1/embeddings", Route.EMBEDDINGS),
        ("GET", b"/v1/models", Route.MODELS),
    ],
)
def test_each_listed_route_matches_exactly_with_its_method(
    method: str, path: bytes, route: Route
) -> None:
    assert match_route(method, path) == (route, None)
    wrong = "GET" if method == "POST" else "POST"
    with pytest.raises(MethodNotAllowed) as refused:
        match_route(wrong, path)
    assert refused.value.headers == {"allow": method}
    assert f"Method {wrong} is not allowed for {route.value}; use {method}." == str(refused.value)


@pytest.mark.parametrize(
    ("path", "model"),
    [
        (b"/v1/models/sim-model", "sim-model"),
        (b"/v1/models/org%2Fmodel", "org/model"),
        (b"/v1/models/x", "x"),
        (b"/v1/models/caf%C3%A9", "caf\u00e9"),  # percent-escapes are UTF-8
        (b"/v1/models/\xe9", "\u00e9"),  # a raw byte is read as latin-1, never refused
    ],
)
def test_a_model_path_gives_the_decoded_model_id(path: bytes, model: str) -> None:
    assert match_route("GET", path) == (Route.MODEL, model)
    with pytest.raises(MethodNotAllowed) as refused:
        match_route("POST", path)
    assert refused.value.headers == {"allow": "GET"}


@pytest.mark.parametrize(
    "path", [b"/v1/models/", b"/v1/model", b"/v1/modelsx", b"/v1/chat/completions/", b""]
)
def test_anything_else_is_not_found_naming_the_path(path: bytes) -> None:
    with pytest.raises(RouteNotFound) as refused:
        match_route("GET", path)
    assert str(refused.value) == f"Unknown request URL: GET {path.decode()}."


def test_only_the_inference_routes_are_forwarded_to_a_replica() -> None:
    assert {route for route in Route if route.forwarded} == {
        Route.CHAT,
        Route.COMPLETIONS,
        Route.EMBEDDINGS,
        Route.MESSAGES,
        Route.COUNT_TOKENS,
        Route.RESPONSES,
        Route.RESPONSE,
        Route.RESPONSE_CANCEL,
        # Only for a model whose `apis` name them (tests/test_pooling_routes.py).
        Route.RERANK,
        Route.RERANK_V2,
        Route.SCORE,
        Route.EMBED_V2,
        Route.TRANSCRIPTIONS,
        Route.TRANSLATIONS,
    }


@pytest.mark.parametrize(
    ("method", "path", "route", "response_id"),
    [
        ("POST", b"/v1/responses", Route.RESPONSES, None),
        ("GET", b"/v1/responses/resp_0a-Z", Route.RESPONSE, "resp_0a-Z"),
        ("POST", b"/v1/responses/resp_0a-Z/cancel", Route.RESPONSE_CANCEL, "resp_0a-Z"),
    ],
)
def test_the_responses_routes_give_the_response_id(
    method: str, path: bytes, route: Route, response_id: str | None
) -> None:
    assert match_route(method, path) == (route, response_id)
    with pytest.raises(MethodNotAllowed):
        match_route("PUT", path)


@pytest.fixture(scope="module")
def keyed_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--api-key", REPLICA_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def keyed_gateway(module_tmp: Path, keyed_sim: Process) -> Iterator[Process]:
    # Health checks once, at start: the replica's request counts then move only with the tests.
    config = gateway_config(
        free_port(), {}, max_body_bytes=4096, upstreams={"health": {"interval": 3600}}
    )
    config["models"] = [
        {"name": MODEL, "replicas": [{"url": keyed_sim.url, "api_key": REPLICA_KEY}]}
    ]
    with run_gateway(module_tmp, config) as process:
        deadline = time.monotonic() + 10
        while "/v1/models" not in sim_paths_seen(keyed_sim):  # that first check is done
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield process


def sim_paths_seen(sim: Process) -> dict[str, float]:
    seen: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{sim.url}/metrics").text):
        for sample in family.samples:
            if sample.name == "sim_http_requests_total":
                seen[sample.labels["path"]] = sample.value
    return seen


def raw_request(port: int, method: str, path: str) -> tuple[int, bytes]:
    """Send the path exactly as written: HTTP clients would normalise `..` and `//`."""
    body = b'{"model":"sim-model","prompt":"x"}'
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


@pytest.mark.parametrize("path", UNGUARDED + TRICKS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unlisted_paths_are_404_and_never_forwarded(
    keyed_sim: Process, keyed_gateway: Process, path: str, method: str
) -> None:
    before = sim_paths_seen(keyed_sim)
    status, payload = raw_request(keyed_gateway.port, method, path)
    if (method, path) == ("GET", "/metrics"):
        # The gateway's own metrics, never the replica's.
        assert status == 200
        assert b"gateway_" in payload and b"vllm:" not in payload
    else:
        assert status == 404
        assert httpx.Response(200, content=payload).json()["error"]["code"] == "not_found"
    after = sim_paths_seen(keyed_sim)
    # The one new /metrics request is this test's own scrape, sent straight to the simulator.
    before["/metrics"] = before.get("/metrics", 0) + 1
    assert after == before


def test_wrong_method_is_405(keyed_gateway: Process) -> None:
    response = httpx.get(f"{keyed_gateway.url}/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_client_credential_is_replaced_by_the_replica_key(keyed_gateway: Process) -> None:
    """The simulator demands REPLICA_KEY: it answers only if the gateway swapped the header."""
    response = httpx.post(
        f"{keyed_gateway.url}/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
        headers=keyed_gateway.auth,  # a gateway key, which the replica would refuse
    )
    assert response.status_code == 200, response.text
    assert REPLICA_KEY not in response.text


def test_request_id_is_returned_but_never_sent_upstream(keyed_gateway: Process) -> None:
    response = httpx.post(
        f"{keyed_gateway.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"X-Request-Id": "trace-abc-123", **keyed_gateway.auth},
    )
    assert response.headers["x-request-id"] == "trace-abc-123"
    # vLLM (and the simulator) build the completion id from the request id they received:
    # the gateway's own, never one a client chose.
    completion_id = response.json()["id"]
    assert completion_id.startswith("chatcmpl-") and "trace-abc-123" not in completion_id


def test_unusable_request_id_is_replaced(keyed_gateway: Process) -> None:
    headers = {"X-Request-Id": "a b", **keyed_gateway.auth}
    response = httpx.get(f"{keyed_gateway.url}/v1/models", headers=headers)
    assert response.headers["x-request-id"] != "a b"
    assert len(response.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_request"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'{"prompt": "no model"}', 400, "invalid_request"),
        (b'{"model": 7}', 400, "invalid_request"),
        (b'{"model": "missing", "prompt": "x"}', 404, "model_not_found"),
        (b'{"model": "sim-model", "prompt": "' + b"x" * 5000 + b'"}', 413, "request_too_large"),
        (b"\xff\xfe", 400, "invalid_request"),
    ],
)
def test_refusals_are_openai_shaped(
    keyed_gateway: Process, content: bytes, status: int, code: str
) -> None:
    response = httpx.post(
        f"{keyed_gateway.url}/v1/completions",
        content=content,
        headers={"Content-Type": "application/json", **keyed_gateway.auth},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert "Traceback" not in response.text


def test_chunked_body_over_the_limit_is_413(keyed_gateway: Process) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "sim-model", "prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    url = f"{keyed_gateway.url}/v1/completions"
    response = httpx.post(url, content=chunks(), headers=keyed_gateway.auth)
    assert response.status_code == 413


def test_replica_refusing_the_gateway_key_is_a_502(module_tmp: Path, keyed_sim: Process) -> None:
    config = gateway_config(free_port(), {})
    config["models"] = [
        {"name": MODEL, "replicas": [{"url": keyed_sim.url, "api_key": "not-the-replica-key"}]}
    ]
    with run_gateway(module_tmp, config) as gateway:
        response = httpx.post(
            f"{gateway.url}/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
            headers=gateway.auth,
        )
        log = gateway.log()
    assert response.status_code == 502
    error = response.json()["error"]
    # The client learns it is the gateway's problem; the operator's log says which replica.
    assert "The gateway could not use a server for this model" in error["message"]
    assert keyed_sim.url not in response.text
    assert f"replica {keyed_sim.url} refused the gateway's API key" in log
    assert "not-the-replica-key" not in response.text
    assert "not-the-replica-key" not in log
