"""Conversation affinity through real gateways in front of real simulators: every turn
of a conversation reaches the same replica, two gateways agree on which, a session
header decides when sent, and a busy replica hands its conversations on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.servers import Process, free_port, gateway_config, metric, run_gateway, run_simulator

MODEL = "sim-model"
CHAT = "/v1/chat/completions"
SYSTEM = {"role": "system", "content": "You answer in one line."}


def served(sim: Process) -> float:
    return metric(sim.url, "sim_http_requests_total", path=CHAT)


def picks(gateway: Process, pick: str) -> float:
    return metric(gateway.url, "gateway_affinity_picks_total", model=MODEL, pick=pick)


def replica_of(sims: list[Process], send: Any) -> int:
    """Which of SIMS served the one request SEND makes."""
    before = [served(sim) for sim in sims]
    send()
    grown = [i for i, sim in enumerate(sims) if served(sim) > before[i]]
    assert len(grown) == 1, grown
    return grown[0]


def turns(n: int) -> list[list[dict[str, str]]]:
    """Three turns of conversation N: each resends everything before it."""
    first = [SYSTEM, {"role": "user", "content": f"Question {n}: what is a KV cache?"}]
    second = [*first, {"role": "assistant", "content": "Cached keys."}]
    second.append({"role": "user", "content": "And prefix caching?"})
    third = [*second, {"role": "assistant", "content": "Reuse."}, {"role": "user", "content": "Ok"}]
    return [first, second, third]


@contextmanager
def fleet(
    tmp: Path, affinity: dict[str, object], gateways: int = 1, *sim_args: str
) -> Iterator[tuple[list[Process], list[openai.OpenAI], list[Process]]]:
    """Three simulators; GATEWAYS gateways in front of them, each with its own key."""
    with ExitStack() as stack:
        sims = [stack.enter_context(run_simulator(tmp, *sim_args)) for _ in range(3)]
        urls = [sim.url for sim in sims]
        started: list[Process] = []
        for _ in range(gateways):
            config = gateway_config(free_port(), {MODEL: urls})
            config["upstreams"] = {"affinity": affinity}
            started.append(stack.enter_context(run_gateway(tmp, config)))
        clients = [
            stack.enter_context(
                openai.OpenAI(base_url=f"{g.url}/v1", api_key=g.api_key or "", max_retries=0)
            )
            for g in started
        ]
        yield sims, clients, started


def ask(client: openai.OpenAI, messages: list[dict[str, str]], **extra: Any) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=2,
        **extra,
    )
    assert answer.choices[0].message.content


def test_every_turn_of_a_conversation_reaches_one_replica(tmp_path: Path) -> None:
    with fleet(tmp_path, {"by": "conversation"}) as (sims, (client,), gateways):
        homes = []
        for n in range(9):
            seen = {replica_of(sims, lambda m=m: ask(client, m)) for m in turns(n)}
            assert len(seen) == 1, (n, seen)
            homes.append(seen.pop())
        # Nine conversations do not all share one replica (3^-8 by chance).
        assert len(set(homes)) > 1, homes

        # A streamed turn goes where the conversation lives too.
        def streamed() -> None:
            chunks = client.chat.completions.create(
                model=MODEL, messages=turns(0)[1], max_tokens=2, stream=True
            )
            assert list(chunks)

        assert replica_of(sims, streamed) == homes[0]
        gateway = gateways[0]
        assert picks(gateway, "first") == 9 * 3 + 1 and picks(gateway, "next") == 0


def test_without_affinity_the_turns_of_a_conversation_spread(tmp_path: Path) -> None:
    """The check above could fail: the least-busy pick rotates among idle replicas."""
    with fleet(tmp_path, {"by": "none"}) as (sims, (client,), gateways):
        seen = {replica_of(sims, lambda m=m: ask(client, m)) for n in range(3) for m in turns(n)}
        assert len(seen) > 1
        assert picks(gateways[0], "first") == picks(gateways[0], "next") == 0


def test_two_gateways_send_a_conversation_to_the_same_replica(tmp_path: Path) -> None:
    """The gateways share nothing; the second takes the conversations in the other
    order, so a pick that depended on what a gateway saw before would differ."""
    with fleet(tmp_path, {"by": "conversation"}, gateways=2) as (sims, (one, two), _):
        order = list(range(6))
        first = {n: replica_of(sims, lambda n=n: ask(one, turns(n)[1])) for n in order}
        second = {n: replica_of(sims, lambda n=n: ask(two, turns(n)[1])) for n in order[::-1]}
        assert first == second
        assert len(set(first.values())) > 1, first


def test_a_session_header_keeps_different_openings_together(tmp_path: Path) -> None:
    affinity = {"by": "conversation", "header": "X-Session-Id"}
    with fleet(tmp_path, affinity) as (sims, (client,), _):
        for session in ("alpha", "beta", "gamma"):
            headers = {"X-Session-Id": session}
            seen = {
                replica_of(sims, lambda n=n, h=headers: ask(client, turns(n)[0], extra_headers=h))
                for n in range(5)
            }
            assert len(seen) == 1, (session, seen)
        # Without the header the opening decides, so the five openings spread again.
        spread = {replica_of(sims, lambda n=n: ask(client, turns(n)[0])) for n in range(9)}
        assert len(spread) > 1


def test_a_busy_replica_hands_its_conversation_to_the_next(tmp_path: Path) -> None:
    """Twelve streams of one conversation at once: the bound (max_load 1.5 of three
    replicas) keeps its replica from taking them all; the rest go elsewhere."""
    affinity = {"by": "conversation", "max_load": 1.5}
    with fleet(tmp_path, affinity, 1, "--itl-ms", "30") as (sims, (client,), gws):
        home = replica_of(sims, lambda: ask(client, turns(0)[0]))
        gateway = gws[0]
        before = [served(sim) for sim in sims]

        async def stream(http: httpx.AsyncClient) -> int:
            # 300 tokens 30 ms apart (9 s): every stream is still open when the last starts.
            body = {"model": MODEL, "messages": turns(0)[0], "max_tokens": 300, "stream": True}
            async with http.stream(
                "POST", f"{gateway.url}{CHAT}", json=body, headers=gateway.auth
            ) as response:
                await response.aread()
                return response.status_code

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as http:
                return list(await asyncio.gather(*(stream(http) for _ in range(12))))

        assert asyncio.run(burst()) == [200] * 12
        counts = [served(sim) - before[i] for i, sim in enumerate(sims)]
        assert sum(counts) == 12
        # Each pick: the home replica while it has fewer than ceil(1.5 * (in flight + 1)
        # / 3), else the next in the ranking. So 6 home, 6 next, 0 for the last (the least
        # busy pick would share them 4, 4, 4).
        assert counts[home] == max(counts) and counts[home] <= 6, counts
        assert min(counts) < 4, counts
        assert picks(gateway, "first") == 1 + counts[home]
        assert picks(gateway, "next") == 12 - counts[home]


def prefix_hits(sims: list[Process]) -> float:
    return sum(metric(sim.url, "vllm:prefix_cache_hits_total") for sim in sims)


def cached_share(tmp: Path, affinity: dict[str, object]) -> float:
    """Four conversations of three turns taken in turn, each opening with its own 64
    words: of the prompt tokens a prefix cache could give (each turn but the last, in
    the next), the share the simulators' prefix caches found. Four, not three: the
    least busy pick takes three idle replicas in turn, and with three conversations
    each would land where it was before by chance."""
    with fleet(tmp, affinity) as (sims, (client,), _):
        histories = [
            [{"role": "user", "content": " ".join(f"c{n}w{i}" for i in range(64))}]
            for n in range(4)
        ]
        reusable = 0
        before = prefix_hits(sims)
        for turn in range(3):
            for history in histories:
                answer = client.chat.completions.create(model=MODEL, messages=history, max_tokens=3)
                assert answer.usage is not None
                if turn < 2:
                    reusable += answer.usage.prompt_tokens
                history.append({"role": "assistant", "content": answer.choices[0].message.content})
                history.append({"role": "user", "content": f"next {turn}"})
        return (prefix_hits(sims) - before) / reusable


def test_turns_find_their_conversation_in_the_prefix_cache_only_with_affinity(
    tmp_path: Path,
) -> None:
    """As tests/e2e/test_e2e_affinity.py shows with real vLLM: each turn finds all but
    the last partial block of the turn before; without affinity the least busy pick
    sends turns to the other replicas, whose caches hold none of it."""
    kept = cached_share(tmp_path, {"by": "conversation"})
    spread = cached_share(tmp_path, {"by": "none"})
    assert kept > 0.8, (kept, spread)
    assert spread < kept / 2, (kept, spread)
