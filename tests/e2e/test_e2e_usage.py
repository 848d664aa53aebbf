"""Real vLLM: a stream the gateway asked usage for reaches the client as vLLM sends it without.

The gateway adds `stream_options.include_usage` to count tokens, removes the
usage event, and puts `system_fingerprint` back on the finishing event (vLLM
moves it to the usage event when usage is asked for). Greedy decoding makes the
two streams the same but for each response's id and creation time.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e.conftest import CHAT_MODEL, Server
from tests.servers import Process

_ID = re.compile(rb'"id":"[^"]*"')
_CREATED = re.compile(rb'"created":\d+')


# vLLM stamps a finishing event with the fingerprint as its last field.
_STAMPED = re.compile(rb',"system_fingerprint":"[^"]+"\}$')


def normalized(stream: bytes) -> bytes:
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"-"', stream))


def raw_stream(url: str, path: str, headers: dict[str, str], body: dict[str, object]) -> bytes:
    with httpx.stream("POST", f"{url}{path}", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        return response.read()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name three colors."}]}),
        ("/v1/completions", {"prompt": "The three primary colors are"}),
    ],
    ids=["chat", "completion"],
)
@pytest.mark.parametrize("options", [None, {"include_usage": False}])
def test_added_usage_leaves_the_stream_as_vllm_sends_it(
    e2e_gateway: Process,
    vllm_chat: Server,
    path: str,
    fields: dict[str, object],
    options: dict[str, object] | None,
) -> None:
    body: dict[str, object] = {
        "model": CHAT_MODEL,
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        **fields,
    }
    if options is not None:
        body["stream_options"] = options
    direct = raw_stream(vllm_chat.url, path, vllm_chat.headers, body)
    through = raw_stream(e2e_gateway.url, path, e2e_gateway.auth, body)
    assert b'"system_fingerprint"' in direct
    assert normalized(through) == normalized(direct)


def test_two_choices_each_get_their_fingerprint_back(
    e2e_gateway: Process, vllm_chat: Server
) -> None:
    # vLLM refuses n > 1 with greedy decoding, and sampled text (even how each choice
    # ends) differs from one request to the next: the shape is compared, not the bytes.
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "n": 2,
        "temperature": 0.8,
        "max_tokens": 12,
        "stream": True,
    }
    direct = raw_stream(vllm_chat.url, "/v1/chat/completions", vllm_chat.headers, body)
    through = raw_stream(e2e_gateway.url, "/v1/chat/completions", e2e_gateway.auth, body)
    for stream in (direct, through):
        events = [event for event in stream.split(b"\n\n") if event]
        finishing = [event for event in events if b'"finish_reason":"' in event]
        assert len(finishing) == 2
        assert all(_STAMPED.search(event) for event in finishing), finishing
        assert events[-1] == b"data: [DONE]"
    assert b'"usage"' not in through
