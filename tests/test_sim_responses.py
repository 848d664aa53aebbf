"""The simulator's Responses API, asked directly: vLLM 0.32's events, store and errors."""

from __future__ import annotations

import json

import httpx

from tests.servers import Process

BODY = {"model": "sim-model", "input": "Name the capital of France", "max_output_tokens": 3}


def events_of(text: str) -> list[tuple[str, dict[str, object]]]:
    found = []
    for block in text.split("\n\n"):
        if block:
            kind, data = block.split("\n", 1)
            found.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return found


def test_a_stream_is_vllm_s_event_sequence(sim: Process) -> None:
    answer = httpx.post(f"{sim.url}/v1/responses", json={**BODY, "stream": True})
    events = events_of(answer.text)
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert all(data["type"] == kind for kind, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    assert isinstance(final, dict) and final["status"] == "incomplete"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 3
    deltas = "".join(str(data["delta"]) for kind, data in events if kind.endswith(".delta"))
    assert final["output"][0]["content"][0]["text"] == deltas
    stored = httpx.get(f"{sim.url}/v1/responses/{final['id']}")
    assert stored.json() == final


def test_the_store_and_its_errors(sim: Process) -> None:
    made = httpx.post(f"{sim.url}/v1/responses", json=BODY).json()
    assert next(iter(made)) == "id" and made["id"].startswith("resp_")
    assert httpx.get(f"{sim.url}/v1/responses/{made['id']}").json() == made
    cancelled = httpx.post(f"{sim.url}/v1/responses/{made['id']}/cancel")
    assert cancelled.status_code == 400
    assert cancelled.json()["error"]["message"] == "Cannot cancel a synchronous response."
    unstored = httpx.post(f"{sim.url}/v1/responses", json={**BODY, "store": False}).json()
    for response_id in (unstored["id"], "resp_unknown"):
        missing = httpx.get(f"{sim.url}/v1/responses/{response_id}")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": {
                "message": f"Response with id '{response_id}' not found.",
                "type": "invalid_request_error",
                "param": "response_id",
                "code": 404,
            }
        }
