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


_CONTENT = re.compile(rb'"content":"(?:[^"\\]|\\.)*"')
_INDEX = re.compile(rb'"choices":\[\{"index":(\d+)')


def normalized(stream: bytes, blank_text: bool) -> list[bytes]:
    """The events with ids and times blanked, each choice's in order: vLLM may interleave
    two choices' events differently from one request to the next."""
    stream = _CREATED.sub(b'"created":0', _ID.sub(b'"id":"-"', stream))
    if blank_text:
        stream = _CONTENT.sub(b'"content":"-"', stream)
    events = stream.split(b"\n\n")

    def choice(event: bytes) -> int:
        found = _INDEX.search(event)
        return int(found[1]) if found else -1

    return sorted(events, key=choice)


def raw_stream(url: str, path: str, headers: dict[str, str], body: dict[str, object]) -> bytes:
    with httpx.stream("POST", f"{url}{path}", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        return response.read()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name three colors."}]}),
        ("/v1/completions", {"prompt": "The three primary colors are"}),
        (
            "/v1/chat/completions",
            # Two choices: vLLM refuses n > 1 with greedy decoding; a seed makes it repeatable.
            {
                "messages": [{"role": "user", "content": "Hi"}],
                "n": 2,
                "temperature": 0.8,
                "seed": 7,
            },
        ),
    ],
    ids=["chat", "completion", "chat-n2"],
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
    sampled = "n" in fields
    assert normalized(through, sampled) == normalized(direct, sampled)
