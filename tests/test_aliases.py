"""Model aliases: a name that stands for models tried in order, served by the first able one.

One gateway in front of real simulators: `down-model` on a closed port, `busy-model`
reporting a deep queue (shed), `small-model` healthy and idle.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.settings import Settings, SettingsError, load_settings
from tests.servers import Process, free_port, gateway_config, metric, run_gateway, run_simulator

ADMIN_TOKEN = "admin-token-for-the-alias-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ALIASES = {
    "chat": ["down-model", "small-model"],
    "fast": ["busy-model", "small-model"],
    "dead": ["down-model"],
    "swamped": ["busy-model", "down-model"],
    "ears": ["ears-model"],
}
PROMPT = [{"role": "user", "content": "Say something"}]


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Process]:
    with ExitStack() as stack:
        small = stack.enter_context(run_simulator(module_tmp, model="small-model"))
        busy = stack.enter_context(
            run_simulator(module_tmp, "--report-waiting", "20", model="busy-model")
        )
        models = {
            "down-model": [f"http://127.0.0.1:{free_port()}"],  # nothing listens there
            "busy-model": [busy.url],
            "small-model": [small.url],
        }
        upstreams = {
            "health": {"interval": 0.2, "timeout": 0.5, "unhealthy_threshold": 1},
            "load": {"scrape_interval": 0.2, "shed_waiting_above": 10, "shed_retry_after": 3},
        }
        config = gateway_config(free_port(), models, upstreams=upstreams, aliases=ALIASES)
        # A speech model: its requests are refused before they would reach a replica.
        config["models"].append(  # type: ignore[attr-defined]
            {"name": "ears-model", "replicas": [{"url": small.url}], "apis": ["transcriptions"]}
        )
        config["admin"] = {"tokens": [ADMIN_TOKEN]}
        process = stack.enter_context(run_gateway(module_tmp, config))
        _wait_until_settled(process)
        yield process


def _wait_until_settled(gateway: Process) -> None:
    """Until the health check has taken `down-model` out and a scrape saw the queue."""
    deadline = time.monotonic() + 15
    while True:
        down = post(gateway, gateway.auth, {"model": "down-model", "prompt": "x", "max_tokens": 1})
        busy = post(gateway, gateway.auth, {"model": "busy-model", "prompt": "x", "max_tokens": 1})
        codes = (down.json()["error"]["code"], busy.json()["error"]["code"])
        if codes == ("no_healthy_replica", "model_overloaded"):
            return
        assert time.monotonic() < deadline, codes
        time.sleep(0.1)


def post(
    gateway: Process, headers: dict[str, str], body: Any, path: str = "/v1/completions"
) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=30)


def new_key(gateway: Process, **fields: Any) -> tuple[str, str]:
    body = {"tenant": "aliases", **fields}
    created = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN, timeout=10)
    assert created.status_code == 201, created.text
    return created.json()["key"], created.json()["id"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_fallback_answers_when_the_primary_has_no_usable_replica(gateway: Process) -> None:
    key, _ = new_key(gateway)
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=PROMPT, max_tokens=3
        )
        assert raw.headers["x-gateway-model"] == "small-model"
        # The simulator refuses names it does not serve: the body carried the target's.
        assert raw.parse().model == "small-model"
        with client.chat.completions.with_streaming_response.create(
            model="chat", messages=PROMPT, max_tokens=3, stream=True
        ) as stream:
            assert stream.headers["x-gateway-model"] == "small-model"
            assert "data: [DONE]" in stream.read().decode()
        embedded = client.embeddings.with_raw_response.create(model="chat", input="hello")
        assert embedded.headers["x-gateway-model"] == "small-model"
        assert len(embedded.parse().data[0].embedding) > 0
        completed = client.completions.with_raw_response.create(
            model="chat", prompt="Once", max_tokens=2
        )
        assert completed.headers["x-gateway-model"] == "small-model"


def test_the_anthropic_route_follows_the_alias_too(gateway: Process) -> None:
    key, _ = new_key(gateway)
    with anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0) as client:
        raw = client.messages.with_raw_response.create(model="chat", max_tokens=3, messages=PROMPT)
        assert raw.headers["x-gateway-model"] == "small-model"
        assert raw.parse().model == "small-model"
        counted = client.messages.with_raw_response.count_tokens(model="chat", messages=PROMPT)
        assert counted.headers["x-gateway-model"] == "small-model"


def test_a_model_called_by_name_is_named_in_the_header(gateway: Process) -> None:
    body = {"model": "small-model", "prompt": "x", "max_tokens": 1, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/completions", json=body, headers=gateway.auth, timeout=30
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["x-gateway-model"] == "small-model"
        assert "[DONE]" in streamed.read().decode()


def test_usage_and_limits_are_the_serving_model_s(gateway: Process) -> None:
    limits = {"models": {"small-model": {"requests_per_minute": 2}}}
    key, key_id = new_key(gateway, limits=limits)
    before = metric(gateway.url, "gateway_requests_total", model="small-model", status="200")
    body = {"model": "chat", "prompt": "Count me", "max_tokens": 2}
    assert [post(gateway, bearer(key), body).status_code for _ in range(2)] == [200, 200]
    # The third is over small-model's rate, whichever name it was called by.
    refused = post(gateway, bearer(key), {**body, "model": "small-model"})
    assert refused.status_code == 429, refused.text
    assert post(gateway, bearer(key), body).status_code == 429
    after = metric(gateway.url, "gateway_requests_total", model="small-model", status="200")
    assert after - before == 2
    assert metric(gateway.url, "gateway_requests_total", model="chat") == 0
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=ADMIN)
        models = answer.json()["models"]
        if models.get("small-model", {}).get("requests") == 2:
            break
        assert time.monotonic() < deadline, models
        time.sleep(0.1)
    assert set(models) == {"small-model"}


def test_a_shedding_model_falls_through_to_the_next(gateway: Process) -> None:
    answer = post(gateway, gateway.auth, {"model": "fast", "prompt": "x", "max_tokens": 1})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-model"] == "small-model"


def test_an_alias_with_no_able_model_is_refused_like_a_model(gateway: Process) -> None:
    dead = post(gateway, gateway.auth, {"model": "dead", "prompt": "x", "max_tokens": 1})
    down = post(gateway, gateway.auth, {"model": "down-model", "prompt": "x", "max_tokens": 1})
    assert dead.status_code == down.status_code == 503
    assert dead.json()["error"] == {
        **down.json()["error"],
        "message": "No healthy replica is serving model 'dead' right now.",
    }
    assert "x-gateway-model" not in dead.headers
    # One model shedding (the other down): the shedding refusal, naming the alias.
    swamped = post(gateway, gateway.auth, {"model": "swamped", "prompt": "x", "max_tokens": 1})
    assert swamped.status_code == 503
    assert swamped.headers["retry-after"] == "3"
    assert swamped.json()["error"]["code"] == "model_overloaded"
    assert "'swamped'" in swamped.json()["error"]["message"]


def test_a_key_must_be_allowed_the_name_it_calls(gateway: Process) -> None:
    alias_only, _ = new_key(gateway, models=["chat"])
    body = {"model": "chat", "prompt": "x", "max_tokens": 1}
    assert post(gateway, bearer(alias_only), body).status_code == 200
    direct = post(gateway, bearer(alias_only), {**body, "model": "small-model"})
    missing = post(gateway, bearer(alias_only), {**body, "model": "no-such-model"})
    assert direct.status_code == missing.status_code == 404
    assert direct.json()["error"]["code"] == missing.json()["error"]["code"]
    target_only, _ = new_key(gateway, models=["small-model"])
    refused = post(gateway, bearer(target_only), body)
    assert refused.status_code == 404
    assert refused.json()["error"]["message"] == "The model 'chat' does not exist."


def test_models_lists_the_aliases_a_key_may_use(gateway: Process) -> None:
    def ids(key: str) -> list[str]:
        listing = httpx.get(f"{gateway.url}/v1/models", headers=bearer(key), timeout=10)
        return [card["id"] for card in listing.json()["data"]]

    everything, _ = new_key(gateway)
    models = ["down-model", "busy-model", "small-model", "ears-model"]
    # Models, then aliases in the settings' order (yaml.safe_dump wrote them sorted).
    assert ids(everything) == [*models, *sorted(ALIASES)]
    some, _ = new_key(gateway, models=["chat", "small-model"])
    assert ids(some) == ["small-model", "chat"]
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=some, max_retries=0) as client:
        assert client.models.retrieve("chat").id == "chat"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("fast")  # an alias this key may not use
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-alias")


@pytest.mark.parametrize("model", [["chat"], {"chat": 1}, 7, True, ""])
def test_an_alias_in_an_odd_type_is_refused(gateway: Process, model: object) -> None:
    answer = post(gateway, gateway.auth, {"model": model, "prompt": "x", "max_tokens": 1})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "model"


def test_an_alias_is_matched_exactly(gateway: Process) -> None:
    for name in ("chat ", "CHAT", "chat\u0000"):
        answer = post(gateway, gateway.auth, {"model": name, "prompt": "x", "max_tokens": 1})
        assert answer.status_code == 404, name


def _settings(aliases: object) -> Settings:
    models = [{"name": name, "replicas": [{"url": "10.0.0.5:8000"}]} for name in ("a", "b")]
    env = {"VGW_AUTH__PEPPER": "p" * 40}
    return load_settings(None, {**env, "VGW_MODELS": json.dumps(models), "VGW_ALIASES": aliases})


def test_aliases_are_read_from_the_settings() -> None:
    settings = _settings('{"best": ["a", "b"], "only-b": ["b"]}')
    assert settings.aliases == {"best": ["a", "b"], "only-b": ["b"]}
    assert _settings("{}").aliases == {}


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ('{"a": ["b"]}', "'a' is a model's name"),
        ('{"best": ["c"]}', "names 'c', which is not in models"),
        ('{"best": ["a"], "better": ["best"]}', "names the alias 'best'"),
        ('{"loop": ["loop"]}', "names the alias 'loop'"),
        ('{"best": []}', "needs at least one model"),
        ('{"best": ["a", "a"]}', "more than once"),
        ('{"": ["a"]}', "non-empty"),
        ('{"best": "a"}', "aliases.best"),
        ('{"best": [1]}', "aliases.best.0"),
        ('["best"]', "aliases"),
    ],
)
def test_bad_aliases_stop_the_start(aliases: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        _settings(aliases)


def test_an_alias_serves_only_the_routes_its_serving_model_enables(gateway: Process) -> None:
    """`small-model` keeps the default APIs: rerank through an alias of it is the same
    404 as rerank on the model itself; an audio form cannot be renamed, so an alias
    there is refused with a 400 naming `model`."""
    key, _ = new_key(gateway)
    rerank = {"model": "chat", "query": "q", "documents": ["a", "b"]}
    refused = post(gateway, bearer(key), rerank, "/v1/rerank")
    direct = post(gateway, bearer(key), {**rerank, "model": "small-model"}, "/v1/rerank")
    assert refused.status_code == direct.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == direct.json()["error"]["code"] == "model_not_found"
    assert "small-model" in refused.json()["error"]["message"]
    boundary = "b0"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nchat\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**bearer(key), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    audio = httpx.post(
        f"{gateway.url}/v1/audio/transcriptions", content=form, headers=headers, timeout=30
    )
    # small-model does not serve transcriptions either: the apis check comes first.
    assert audio.status_code == 404, audio.text
    assert audio.json()["error"]["param"] == "model"
    renamed = httpx.post(
        f"{gateway.url}/v1/audio/transcriptions",
        content=form.replace(b"\r\n\r\nchat\r\n", b"\r\n\r\nears\r\n"),
        headers=headers,
        timeout=30,
    )
    assert renamed.status_code == 400, renamed.text
    assert renamed.json()["error"]["param"] == "model"
    assert "alias" in renamed.json()["error"]["message"]
