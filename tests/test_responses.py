"""OpenAI's Responses API through a real gateway, with the official `openai` SDK.

Three simulators serve one model; each keeps the responses it made in its own
memory, as vLLM does, so a GET or cancel that reaches another replica is a
404. The simulators' own token counters say what the engines generated.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
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
    run_simulator,
)
from tests.test_routes import raw_request, sim_paths_seen

ADMIN_TOKEN = "admin-token-for-responses-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL = "sim-model"
INPUT = "Name the capital of France"
INPUT_TOKENS = 5
MAX_BODY = 64 * 1024
GONE = "is no longer available"


@pytest.fixture(scope="module")
def sims(module_tmp: Path) -> Iterator[list[Process]]:
    with ExitStack() as stack:
        yield [stack.enter_context(run_simulator(module_tmp)) for _ in range(3)]


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sims: list[Process]) -> Iterator[Process]:
    config = gateway_config(free_port(), {MODEL: [sim.url for sim in sims]})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["max_body_bytes"] = MAX_BODY
    with run_gateway(module_tmp, config) as process:
        yield process


def new_key(gateway: Process, tenant: str = "acme", **limits: object) -> tuple[str, str]:
    body = {"tenant": tenant, "name": "responses", "limits": limits}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def sdk(gateway: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def settled_usage(gateway: Process, key_id: str, requests: int) -> dict[str, int]:
    deadline = time.monotonic() + 15
    while True:
        response = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=ADMIN)
        usage: dict[str, int] = response.json()["total"]
        if usage["requests"] >= requests:
            return usage
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)


def generated(sims: list[Process]) -> float:
    return sum(metric(sim.url, "vllm:generation_tokens_total") for sim in sims)


def holders(sims: list[Process], response_id: str) -> list[int]:
    """Which simulators hold RESPONSE_ID: asked directly, each answers from its memory."""
    found = []
    for index, sim in enumerate(sims):
        status = httpx.get(f"{sim.url}/v1/responses/{response_id}", timeout=10).status_code
        assert status in (200, 404)
        if status == 200:
            found.append(index)
    return found


def test_a_response_its_usage_and_its_retrieval(gateway: Process, sims: list[Process]) -> None:
    key, key_id = new_key(gateway)
    before = generated(sims)
    with sdk(gateway, key) as client:
        created = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=7)
        assert created.id.startswith("resp_") and created.status == "incomplete"
        assert created.usage is not None
        assert (created.usage.input_tokens, created.usage.output_tokens) == (INPUT_TOKENS, 7)
        # Asked several times: each GET reaches the one replica that made it.
        for _ in range(4):
            retrieved = client.responses.retrieve(created.id)
            assert retrieved.id == created.id
            assert retrieved.output_text == created.output_text
    assert len(holders(sims, created.id)) == 1
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (INPUT_TOKENS, 7)
    assert usage["completion_tokens"] == generated(sims) - before
    # The GETs were requests, not usage.
    assert usage["requests"] == 1 and usage["estimated_requests"] == 0


def test_a_streamed_response_and_its_exact_usage(gateway: Process, sims: list[Process]) -> None:
    key, key_id = new_key(gateway)
    before = generated(sims)
    with sdk(gateway, key) as client:
        events = list(
            client.responses.create(model=MODEL, input=INPUT, max_output_tokens=6, stream=True)
        )
        kinds = [event.type for event in events]
        assert kinds[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert kinds.count("response.output_text.delta") == 6
        assert kinds[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        final = events[-1].response  # type: ignore[union-attr]
        assert final.usage is not None and final.usage.output_tokens == 6
        # Known to the gateway from the stream's first event.
        assert client.responses.retrieve(final.id).output_text == final.output_text
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (INPUT_TOKENS, 6)
    assert generated(sims) - before == 6 and usage["estimated_requests"] == 0


def _normalised(text: str) -> str:
    """The bytes but for what differs per response: its ids and creation time."""
    text = re.sub(r'"(id|item_id)":"[^"]*"', '"id":""', text)
    return re.sub(r'"created_at":\d+', '"created_at":0', text)


@pytest.mark.parametrize("stream", [False, True])
def test_the_bytes_are_vllm_s_unchanged(
    gateway: Process, sims: list[Process], stream: bool
) -> None:
    key, _ = new_key(gateway)
    body = {"model": MODEL, "input": INPUT, "max_output_tokens": 4, "stream": stream}
    auth = {"Authorization": f"Bearer {key}"}
    through = httpx.post(f"{gateway.url}/v1/responses", json=body, headers=auth, timeout=30)
    direct = httpx.post(f"{sims[0].url}/v1/responses", json=body, timeout=30)
    assert through.status_code == direct.status_code == 200
    assert through.headers["content-type"] == direct.headers["content-type"]
    assert _normalised(through.text) == _normalised(direct.text)
    if stream:
        assert through.text.startswith("event: response.created\ndata: {")
        assert "[DONE]" not in through.text


def test_cancel_reaches_the_replica_that_made_the_response(gateway: Process) -> None:
    key, _ = new_key(gateway)
    with sdk(gateway, key) as client:
        created = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=2)
        for _ in range(3):
            # vLLM's own answer for a finished response: only its replica knows it.
            with pytest.raises(openai.BadRequestError) as caught:
                client.responses.cancel(created.id)
            assert "Cannot cancel a synchronous response" in caught.value.message
        with pytest.raises(openai.NotFoundError):
            client.responses.cancel("resp_0123456789abcdef")


def test_another_tenant_gets_the_unknown_id_404(gateway: Process) -> None:
    mine, _ = new_key(gateway, tenant="acme")
    theirs, _ = new_key(gateway, tenant="globex")
    with sdk(gateway, mine) as client:
        created = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=2)
    auth = {"Authorization": f"Bearer {theirs}"}
    unknown = "resp_" + "0" * 32
    answers = {}
    for response_id in (created.id, unknown):
        url = f"{gateway.url}/v1/responses/{response_id}"
        got = httpx.get(url, headers=auth)
        cancelled = httpx.post(f"{url}/cancel", headers=auth)
        assert got.status_code == cancelled.status_code == 404
        answers[response_id] = got.json()
        assert answers[response_id] == cancelled.json()
    # Byte for byte the same answer but for the id it names: nothing tells them apart.
    assert (
        answers[created.id]["error"]["message"].replace(created.id, unknown)
        == (answers[unknown]["error"]["message"])
    )
    assert answers[unknown]["error"] == {
        "message": f"Response with id '{unknown}' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    with sdk(gateway, theirs) as client, pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(
            model=MODEL, input="more", previous_response_id=created.id, max_output_tokens=2
        )
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_a_follow_up_turn_goes_to_the_previous_response_s_replica(
    gateway: Process, sims: list[Process]
) -> None:
    key, _ = new_key(gateway)
    with sdk(gateway, key) as client:
        first = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=2)
        (holder,) = holders(sims, first.id)
        for _ in range(3):
            turn = client.responses.create(
                model=MODEL, input="and then?", previous_response_id=first.id, max_output_tokens=2
            )
            assert holders(sims, turn.id) == [holder]


def test_errors_in_openai_s_shape(gateway: Process) -> None:
    with sdk(gateway, "vgw-not-a-real-key") as client:
        with pytest.raises(openai.AuthenticationError):
            client.responses.create(model=MODEL, input=INPUT)
        with pytest.raises(openai.AuthenticationError):
            client.responses.retrieve("resp_abc")
    key, _ = new_key(gateway, requests_per_minute=2)
    with sdk(gateway, key) as client:
        created = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=2)
        client.responses.retrieve(created.id)
        # GETs count against requests per minute like any request.
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.retrieve(created.id)
    assert caught.value.response.headers["retry-after"]
    # Ids that are not the caller's count too: they cannot be probed faster.
    key, _ = new_key(gateway, requests_per_minute=1)
    with sdk(gateway, key) as client:
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_" + "1" * 32)
        with pytest.raises(openai.RateLimitError):
            client.responses.retrieve("resp_" + "1" * 32)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_output_tokens", "4000"),
        ("max_output_tokens", True),
        ("max_output_tokens", 2.5),
        ("max_output_tokens", 0),
        ("input", 5),
        ("input", None),
        ("stream", 1),
        ("stream", "true"),
        ("store", "no"),
        ("background", 0),
        ("previous_response_id", 7),
        ("model", ["sim-model"]),
    ],
)
def test_wrong_types_are_refused_naming_the_field(
    gateway: Process, field: str, value: object
) -> None:
    key, _ = new_key(gateway)
    body: dict[str, object] = {"model": MODEL, "input": INPUT, field: value}
    auth = {"Authorization": f"Bearer {key}"}
    answer = httpx.post(f"{gateway.url}/v1/responses", json=body, headers=auth)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_the_key_s_cap_holds_on_max_output_tokens(gateway: Process) -> None:
    key, key_id = new_key(gateway, max_tokens=5)
    with sdk(gateway, key) as client:
        over = client.responses.create(model=MODEL, input=INPUT, max_output_tokens=50)
        unset = client.responses.create(model=MODEL, input=INPUT)
        # An integral float is that integer (pydantic's reading), under the same cap.
        floated = client.responses.create(
            model=MODEL, input=INPUT, extra_body={"max_output_tokens": 3.0}
        )
    assert over.usage is not None and over.usage.output_tokens == 5
    assert unset.usage is not None and unset.usage.output_tokens == 5
    assert floated.usage is not None and floated.usage.output_tokens == 3
    assert settled_usage(gateway, key_id, 3)["completion_tokens"] == 13


def test_a_client_cannot_choose_the_response_id(gateway: Process) -> None:
    key, _ = new_key(gateway)
    with sdk(gateway, key) as client:
        created = client.responses.create(
            model=MODEL, input=INPUT, max_output_tokens=2, extra_body={"request_id": "resp_mine"}
        )
    assert created.id != "resp_mine" and re.fullmatch(r"resp_[0-9a-f]{16}", created.id)


def test_huge_inputs_are_refused(gateway: Process) -> None:
    key, _ = new_key(gateway, tokens_per_minute=2000)
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/responses"
    huge = {"model": MODEL, "input": "word " * MAX_BODY}
    assert httpx.post(url, json=huge, headers=auth).status_code == 413
    # Under the body limit: its size is its prompt estimate, reserved with its output.
    large = {"model": MODEL, "input": "word " * 3000, "max_output_tokens": 1}
    roomy, _ = new_key(gateway, tokens_per_minute=1_000_000)
    first = httpx.post(url, json=large, headers={"Authorization": f"Bearer {roomy}"})
    assert int(first.headers["x-ratelimit-remaining-tokens"]) <= 1_000_000 - 15_000 // 4
    assert httpx.post(url, json=large, headers=auth).status_code == 200
    answer = httpx.post(url, json=large, headers=auth)
    assert answer.status_code == 429 and answer.json()["error"]["type"] == "tokens"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/responses/../models",
        "/v1/responses/..%2f..%2fmetrics",
        "/v1/responses/resp_a%2fb",
        "/v1/responses/resp_a/../../tokenize",
        "/v1/responses/resp_a/cancel/x",
        "/v1/responses/resp_a.json",
        "/v1/responses/" + "a" * 129,
        "/v1/responses/",
        "/v1/responses//cancel",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_hostile_ids_are_no_route(
    gateway: Process, sims: list[Process], path: str, method: str
) -> None:
    seen = [api_requests(sim) for sim in sims]
    status, payload = raw_request(gateway.port, method, path)
    assert status == 404
    assert json.loads(payload)["error"]["code"] == "not_found"
    assert [api_requests(sim) for sim in sims] == seen


def api_requests(sim: Process) -> float:
    """Requests the simulator saw, but for the gateway's own health and load checks."""
    checks = ("/health", "/metrics", "/v1/models")
    return sum(n for path, n in sim_paths_seen(sim).items() if path not in checks)


def test_a_response_whose_replica_left_is_gone(module_tmp: Path) -> None:
    with run_simulator(module_tmp) as keep, ExitStack() as stack:
        leaving = stack.enter_context(run_simulator(module_tmp))
        config = gateway_config(free_port(), {MODEL: [keep.url, leaving.url]})
        config["admin"] = {"tokens": [ADMIN_TOKEN]}
        config["upstreams"] = {"health": {"interval": 0.2, "unhealthy_threshold": 1}}
        with run_gateway(module_tmp, config) as gateway:
            key, _ = new_key(gateway)
            with sdk(gateway, key) as client:
                made = [
                    client.responses.create(model=MODEL, input=INPUT, max_output_tokens=1).id
                    for _ in range(6)
                ]
                on_leaving = [rid for rid in made if holders([leaving], rid)]
                assert on_leaving, "least-outstanding picking spreads six requests"
                stack.close()  # the replica stops
                deadline = time.monotonic() + 10
                while True:
                    try:
                        client.responses.retrieve(on_leaving[0])
                    except openai.NotFoundError as exc:
                        assert GONE in exc.message
                        break
                    except openai.APIStatusError:
                        pass
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                kept = [rid for rid in made if rid not in on_leaving]
                assert all(client.responses.retrieve(rid).id == rid for rid in kept)


def test_gateways_sharing_redis_route_every_id(
    module_tmp: Path, sims: list[Process], redis_server: RedisServer
) -> None:
    auth = {
        "pepper": "pepper-for-tests-only-0123456789abcdef",
        "key_store": {"backend": "redis", "redis_url": redis_server.url},
    }
    configs = []
    for _ in range(2):
        config = gateway_config(free_port(), {MODEL: [sim.url for sim in sims]})
        config["admin"] = {"tokens": [ADMIN_TOKEN]}
        config["auth"] = auth
        configs.append(config)
    with (
        run_gateway(module_tmp, configs[0]) as first,
        run_gateway(module_tmp, configs[1]) as second,
    ):
        key, _ = new_key(first)
        other, _ = new_key(first, tenant="globex")
        with sdk(first, key) as client:
            made = [
                client.responses.create(model=MODEL, input=INPUT, max_output_tokens=1).id
                for _ in range(3)
            ]
        with sdk(second, key) as client:
            for response_id in made:
                assert client.responses.retrieve(response_id).id == response_id
        with sdk(second, other) as client, pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made[0])


def test_a_stream_cut_off_is_charged_its_reservation(gateway: Process) -> None:
    key, key_id = new_key(gateway)
    body = {"model": MODEL, "input": INPUT, "max_output_tokens": 9, "stream": True}
    headers = {"Authorization": f"Bearer {key}", "x-sim-drop-after": "3"}
    answer = httpx.post(f"{gateway.url}/v1/responses", json=body, headers=headers, timeout=30)
    events = [event for event in answer.text.split("\n\n") if event]
    assert events[0].startswith("event: response.created\n")
    # The replica went away mid-stream: one Responses error event ends it, no [DONE].
    assert events[-1].startswith("event: error\ndata: ")
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and "interrupted" in error["message"]
    assert "[DONE]" not in answer.text
    usage = settled_usage(gateway, key_id, 1)
    assert usage["estimated_requests"] == 1 and usage["completion_tokens"] == 9
