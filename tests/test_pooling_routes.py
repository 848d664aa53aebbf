"""Pooling and audio routes: forwarded only for a model whose `apis` name them, checked first.

Real processes: two simulators (a chat deployment with the default APIs, and
a pooling + speech one that enables every family) behind one gateway. No
speech model runs on this machine, so the audio routes are checked against
the simulator's rendering of vLLM 0.32's transcription and translation
answers only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.principal import Limits
from tests.servers import (
    TEST_PEPPER,
    Process,
    create_key,
    free_port,
    gateway_config,
    run_gateway,
    run_simulator,
)

CHAT = "chat-model"
POOL = "pool-model"
ADMIN_TOKEN = "admin-token-for-pooling-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UPLOAD_LIMIT = 64 * 1024
POOLING = ["/v1/rerank", "/v2/rerank", "/v1/score", "/v2/embed"]
AUDIO = ["/v1/audio/transcriptions", "/v1/audio/translations"]
AUDIO_BYTES = b"RIFF" + bytes(range(256)) * 40
BODIES: dict[str, dict[str, object]] = {
    "/v1/rerank": {
        "query": "a cat",
        "documents": ["cats purr", "the sky", "caf\u00e9"],
        "top_n": 2,
    },
    "/v2/rerank": {"query": "a cat", "documents": ["cats purr", "the sky"]},
    "/v1/score": {"text_1": "a cat", "text_2": ["cats purr", "the sky is blue"]},
    "/v2/embed": {"texts": ["hello there", "world"], "embedding_types": ["float"]},
}


class Keys:
    def __init__(self, config: dict[str, object]) -> None:
        self.plain = create_key(config, tenant="pool")
        self.counted = create_key(config, tenant="counted")
        self.capped = create_key(config, tenant="capped", limits=Limits(max_tokens=8))
        # Usage is written in batches: a test that reads it has a tenant of its own.
        self.streamed = create_key(config, tenant="streamed", limits=Limits(max_tokens=8))
        self.estimated = create_key(config, tenant="estimated", limits=Limits(max_tokens=8))


@pytest.fixture(scope="module")
def chat_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--deterministic", model=CHAT) as process:
        yield process


@pytest.fixture(scope="module")
def pool_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--deterministic", model=POOL) as process:
        yield process


@pytest.fixture(scope="module")
def setup(module_tmp: Path, chat_sim: Process, pool_sim: Process) -> Iterator[tuple[Process, Keys]]:
    config = gateway_config(
        free_port(),
        {CHAT: [chat_sim.url], POOL: [pool_sim.url]},
        max_upload_bytes=UPLOAD_LIMIT,
        admin={"tokens": [ADMIN_TOKEN]},
        limits={"max_batch": 3},
        auth={"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(module_tmp / "k.db")}},
    )
    models = config["models"]
    assert isinstance(models, list)
    models[1]["apis"] = [
        "embeddings",
        "rerank",
        "score",
        "embed_v2",
        "transcriptions",
        "translations",
    ]
    keys = Keys(config)
    with run_gateway(module_tmp, config) as gateway:
        yield gateway, keys


@pytest.fixture(scope="module")
def gateway(setup: tuple[Process, Keys]) -> Process:
    return setup[0]


@pytest.fixture(scope="module")
def keys(setup: tuple[Process, Keys]) -> Keys:
    return setup[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def paths_seen(sim: Process) -> dict[str, float]:
    seen: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{sim.url}/metrics").text):
        for sample in family.samples:
            if sample.name == "sim_http_requests_total":
                seen[sample.labels["path"]] = sample.value
    return seen


def post(base: str, path: str, key: str, model: str, **form: str) -> httpx.Response:
    """A JSON request on a pooling route, or a form upload on an audio route."""
    if path in AUDIO:
        files = {"file": ("clip.wav", AUDIO_BYTES, "audio/wav")}
        return httpx.post(
            base + path, data={"model": model, **form}, files=files, headers=bearer(key)
        )
    return httpx.post(base + path, json={"model": model, **BODIES[path]}, headers=bearer(key))


def tenant_usage(gateway: Process, tenant: str) -> dict[str, int]:
    response = httpx.get(f"{gateway.url}/admin/v1/tenants/{tenant}/usage", headers=ADMIN)
    assert response.status_code == 200, response.text
    models: dict[str, dict[str, int]] = response.json()["models"]
    return models.get(POOL, {})


def wait_usage(gateway: Process, tenant: str, requests: int) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while (got := tenant_usage(gateway, tenant)).get("requests", 0) < requests:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    return got


@pytest.mark.parametrize("path", POOLING + AUDIO)
def test_a_route_is_404_for_a_model_that_did_not_enable_it(
    gateway: Process, keys: Keys, chat_sim: Process, path: str
) -> None:
    before = paths_seen(chat_sim)
    response = post(gateway.url, path, keys.plain, CHAT)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": f"The model '{CHAT}' does not serve {path} through this gateway.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert paths_seen(chat_sim).get(path) == before.get(path)


def test_the_default_apis_stay_served(gateway: Process, keys: Keys) -> None:
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat, headers=bearer(keys.plain)
    )
    assert response.status_code == 200, response.text
    # A model that names its apis serves those only: the pooling model has no chat.
    chat["model"] = POOL
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat, headers=bearer(keys.plain)
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", POOLING + AUDIO)
def test_an_enabled_route_answers_the_replicas_bytes(
    gateway: Process, keys: Keys, pool_sim: Process, path: str
) -> None:
    through = post(gateway.url, path, keys.plain, POOL)
    direct = post(pool_sim.url, path, keys.plain, POOL)
    assert through.status_code == direct.status_code == 200, through.text
    assert through.content == direct.content
    assert through.headers["content-type"] == direct.headers["content-type"]


def test_pooling_usage_is_recorded_as_prompt_tokens(gateway: Process, keys: Keys) -> None:
    reported = 0
    for path in POOLING:
        answer = post(gateway.url, path, keys.counted, POOL).json()
        if path == "/v2/embed":
            reported += answer["meta"]["billed_units"]["input_tokens"]
        else:
            assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"]
            reported += answer["usage"]["prompt_tokens"]
    got = wait_usage(gateway, "counted", len(POOLING))
    assert reported > len(POOLING)
    assert got["prompt_tokens"] == reported
    assert got["completion_tokens"] == 0
    assert got["estimated_requests"] == 0


def test_a_streamed_transcription_records_its_usage(gateway: Process, keys: Keys) -> None:
    form = {"stream": "true", "stream_include_usage": "true", "max_completion_tokens": "5"}
    response = post(gateway.url, AUDIO[0], keys.streamed, POOL, **form)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    usage = httpx.Response(200, content=events[-2][len("data: ") :]).json()["usage"]
    got = wait_usage(gateway, "streamed", 1)
    assert (got["prompt_tokens"], got["completion_tokens"]) == (usage["prompt_tokens"], 5)
    assert got["estimated_requests"] == 0


def test_a_transcription_in_seconds_is_recorded_as_its_estimate(
    gateway: Process, keys: Keys
) -> None:
    """vLLM reports audio seconds, not tokens: the reservation is recorded, as estimated."""
    request = httpx.Request(
        "POST",
        gateway.url + AUDIO[0],
        data={"model": POOL, "max_completion_tokens": "3"},
        files={"file": ("clip.wav", AUDIO_BYTES, "audio/wav")},
        headers=bearer(keys.estimated),
    )
    upload = len(request.read())
    with httpx.Client() as client:
        response = client.send(request)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["type"] == "duration"
    got = wait_usage(gateway, "estimated", 1)
    assert got["estimated_requests"] == 1
    # One token per 1,600 bytes of upload, and the answer's bound.
    assert (got["prompt_tokens"], got["completion_tokens"]) == (upload // 1600 + 1, 3)


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/v1/rerank", {"query": "q", "documents": 5}, "documents", "invalid_request"),
        ("/v1/rerank", {"query": "q", "documents": []}, "documents", "invalid_request"),
        ("/v1/rerank", {"query": ["q"], "documents": ["d"]}, "query", "invalid_request"),
        ("/v2/rerank", {"query": "q", "documents": [{"text": "no content"}]}, "documents", None),
        ("/v1/rerank", {"query": "q", "documents": ["d"] * 4}, "documents", "batch_too_large"),
        ("/v1/score", {"text_1": "q", "text_2": ["d"] * 4}, "text_2", "batch_too_large"),
        ("/v1/score", {"queries": ["q"] * 4, "documents": "d"}, "documents", "batch_too_large"),
        ("/v1/score", {"text_1": "q", "text_2": "d", "queries": "q", "items": "d"}, None, None),
        ("/v1/score", {"text_1": "q"}, "documents", "invalid_request"),
        ("/v1/score", {"text_1": 1, "text_2": "d"}, "text_1", "invalid_request"),
        ("/v2/embed", {"texts": "one"}, "texts", "invalid_request"),
        ("/v2/embed", {"texts": ["a"], "inputs": [{}]}, "inputs", "invalid_request"),
        ("/v2/embed", {"texts": ["a"] * 4}, "texts", "batch_too_large"),
        ("/v2/embed", {}, "texts", "invalid_request"),
    ],
)
def test_pooling_contract_refusals_name_the_field(
    gateway: Process,
    keys: Keys,
    pool_sim: Process,
    path: str,
    body: dict[str, object],
    param: str | None,
    code: str | None,
) -> None:
    before = paths_seen(pool_sim)
    response = httpx.post(
        gateway.url + path, json={"model": POOL, **body}, headers=bearer(keys.plain)
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if param is not None:
        assert error["param"] == param
    assert error["code"] == (code or "invalid_request")
    assert paths_seen(pool_sim).get(path) == before.get(path)


def form_body(boundary: str, *parts: tuple[str, str, bytes], close: bool = True) -> bytes:
    lines = b""
    for name, filename, content in parts:
        extra = f'; filename="{filename}"' if filename else ""
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'
        lines += head.encode() + content + b"\r\n"
    return lines + (f"--{boundary}--\r\n".encode() if close else b"")


MODEL_PART = ("model", "", POOL.encode())
FILE_PART = ("file", "a.wav", b"RIFF....")


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("multipart/form-data; boundary=b0", form_body("b0", MODEL_PART, FILE_PART), 200),
        ("multipart/form-data", form_body("b0", MODEL_PART, FILE_PART), 400),
        ("multipart/form-data; boundary=b0", form_body("b1", MODEL_PART, FILE_PART), 400),
        ("multipart/form-data; boundary=b0", form_body("b0", MODEL_PART, close=False), 400),
        ("multipart/form-data; boundary=b0", form_body("b0", FILE_PART), 400),
        ("multipart/form-data; boundary=b0", form_body("b0", MODEL_PART), 400),
        (
            "multipart/form-data; boundary=b0",
            form_body("b0", MODEL_PART, MODEL_PART, FILE_PART),
            400,
        ),
        (
            "multipart/form-data; boundary=b0",
            form_body("b0", MODEL_PART, FILE_PART, *[(f"f{i}", "", b"x") for i in range(40)]),
            400,
        ),
        (
            "multipart/form-data; boundary=b0",
            form_body("b0", MODEL_PART, ("file", "a.wav", b"\r\n--b0\r\nhidden")),
            400,
        ),
        ("application/json", b'{"model": "pool-model", "file": "x"}', 400),
        (
            "multipart/form-data; boundary=b0",
            form_body("b0", MODEL_PART, ("file", "a.wav", b"x" * (UPLOAD_LIMIT + 1))),
            413,
        ),
    ],
)
def test_audio_uploads_are_read_strictly(
    gateway: Process, keys: Keys, content_type: str, body: bytes, status: int
) -> None:
    response = httpx.post(
        gateway.url + AUDIO[1],
        content=body,
        headers={"content-type": content_type, **bearer(keys.plain)},
    )
    assert response.status_code == status, response.text
    if status != 200:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_form_on_a_json_route_is_refused(gateway: Process, keys: Keys) -> None:
    response = httpx.post(
        gateway.url + "/v1/rerank",
        content=form_body("b0", MODEL_PART, FILE_PART),
        headers={"content-type": "multipart/form-data; boundary=b0", **bearer(keys.plain)},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({}, 400),
        ({"max_completion_tokens": "9"}, 400),
        ({"max_completion_tokens": " 5"}, 400),
        ({"max_completion_tokens": "8"}, 200),
    ],
)
def test_a_capped_key_must_bound_an_audio_answer(
    gateway: Process, keys: Keys, form: dict[str, str], status: int
) -> None:
    response = post(gateway.url, AUDIO[1], keys.capped, POOL, **form)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["param"] == "max_completion_tokens"
