"""Conversation affinity against two real vLLM replicas: vLLM's own prefix-cache
counters show that the turns of a conversation reuse its cached prefill through the
gateway with `upstreams.affinity`, and pay it again without.

Each conversation opens with its own long system prompt, so one conversation's
cache never serves another; each turn resends everything before it, as chat
clients do. vLLM counts the prompt tokens it looked up and the ones it found
cached (`vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CHAT_MODEL, Server, chat_replica
from tests.servers import Process, free_port, gateway_config, metric, run_gateway

# Odd, so that without affinity the least busy pick, taking two idle replicas in
# turn, sends each conversation's next turn to the other replica.
CONVERSATIONS = 3
TURNS = 3


@pytest.fixture(scope="module")
def second_chat(tmp_path_factory: pytest.TempPathFactory, vllm_chat: Server) -> Iterator[Server]:
    """Another replica of the chat model: a pool of two."""
    with chat_replica(tmp_path_factory.mktemp("vllm-second")) as server:
        yield server


def cache_hits(servers: list[Server]) -> float:
    """Prompt tokens vLLM found in its prefix cache, summed over SERVERS."""
    return sum(metric(s.url, "vllm:prefix_cache_hits_total") for s in servers)


def opening(run: str, n: int) -> str:
    """A system prompt of over a thousand tokens, its own from the first word."""
    facts = " ".join(
        f"Fact {i} of {run} conversation {n}: the sky is color {i * n}." for i in range(80)
    )
    return f"{run} conversation {n}. You answer briefly. {facts}"


def converse(gateway: Process, run: str) -> int:
    """CONVERSATIONS conversations of TURNS turns, taken in turn; each turn resends the
    conversation so far with vLLM's own answers. The most a prefix cache could give:
    the prompt tokens of each turn before the last."""
    histories = [
        [{"role": "system", "content": opening(run, n)}, {"role": "user", "content": "Hello?"}]
        for n in range(CONVERSATIONS)
    ]
    reusable = 0
    with httpx.Client(timeout=120) as client:
        for turn in range(TURNS):
            for history in histories:
                body = {"model": CHAT_MODEL, "messages": history, "max_tokens": 8}
                response = client.post(
                    f"{gateway.url}/v1/chat/completions", json=body, headers=gateway.auth
                )
                assert response.status_code == 200, response.text
                answer = response.json()
                if turn < TURNS - 1:
                    reusable += answer["usage"]["prompt_tokens"]
                content = answer["choices"][0]["message"]["content"]
                history.append({"role": "assistant", "content": content})
                history.append({"role": "user", "content": f"And then? ({turn})"})
    return reusable


def hit_share(tmp: Path, pool: list[Server], affinity: dict[str, object], run: str) -> float:
    """Of the prompt tokens a cache could have given, the share vLLM found."""
    config = gateway_config(free_port(), {})
    config["models"] = [
        {"name": CHAT_MODEL, "replicas": [{"url": s.url, "api_key": API_KEY} for s in pool]}
    ]
    config["upstreams"] = {"affinity": affinity}
    with run_gateway(tmp, config) as gateway:
        before = cache_hits(pool)
        reusable = converse(gateway, run)
        found = cache_hits(pool) - before
    assert reusable > CONVERSATIONS * (TURNS - 1) * 1000, reusable
    return found / reusable


def test_conversations_reuse_their_prefix_cache_only_with_affinity(
    tmp_path: Path, vllm_chat: Server, second_chat: Server
) -> None:
    pool = [vllm_chat, second_chat]
    kept = hit_share(tmp_path, pool, {"by": "conversation"}, "kept")
    spread = hit_share(tmp_path, pool, {"by": "none"}, "spread")
    # With affinity each turn finds the whole turn before it cached, less the last
    # partial block. Without it the second turn lands on the other replica and finds
    # nothing, and the third finds only the first turn: about half.
    assert kept > 0.85, (kept, spread)
    assert spread < kept - 0.2, (kept, spread)
