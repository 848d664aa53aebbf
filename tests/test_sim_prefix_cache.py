"""The simulator's prefix cache (gateway.sim.prefix_cache): vLLM's automatic prefix
caching over the simulator's tokens, and its two counters on /metrics."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from gateway.sim.prefix_cache import PrefixCache
from tests.servers import Process, metric, run_simulator

CHAT = "/v1/chat/completions"


def words(count: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i}" for i in range(count)]


def test_only_the_leading_full_blocks_already_seen_are_hits() -> None:
    cache = PrefixCache(block_words=4)
    assert cache.lookup(words(10)) == 0  # two full blocks cached, two words left over
    assert len(cache) == 2
    assert cache.lookup(words(10)) == 8
    assert cache.lookup(words(13)) == 8  # a third block is new, and now cached
    assert cache.lookup(words(12)) == 12
    assert cache.lookup(words(3)) == 0  # shorter than a block: nothing to find
    # A different first block: what follows it is another prefix, never a hit.
    assert cache.lookup(["x", *words(11)[1:]]) == 0


def test_a_block_is_named_by_everything_before_it() -> None:
    cache = PrefixCache(block_words=2)
    cache.lookup(["a", "b", "c", "d"])
    assert cache.lookup(["z", "z", "c", "d"]) == 0
    assert cache.lookup(["a", "b", "z", "z", "c", "d"]) == 2


def test_the_least_recently_used_blocks_are_evicted_first() -> None:
    cache = PrefixCache(block_words=1, max_blocks=3)
    cache.lookup(["a"])
    cache.lookup(["b"])
    cache.lookup(["c"])
    assert cache.lookup(["a"]) == 1  # a is used again: b is now the oldest
    cache.lookup(["d"])
    assert len(cache) == 3
    assert cache.lookup(["b"]) == 0
    assert cache.lookup(["a"]) == 1


def counters(sim: Process) -> tuple[float, float]:
    return (
        metric(sim.url, "vllm:prefix_cache_queries_total"),
        metric(sim.url, "vllm:prefix_cache_hits_total"),
    )


def test_the_simulator_counts_prompt_tokens_looked_up_and_found(sim: Process) -> None:
    opening = " ".join(words(40, "prefix-test-"))
    first = [{"role": "user", "content": opening}]
    turn = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    before = counters(sim)
    sizes = []
    for messages, stream in ((first, False), (turn, True), (first, False)):
        body = {"model": "sim-model", "messages": messages, "max_tokens": 2, "stream": stream}
        body["stream_options"] = {"include_usage": True} if stream else None
        answer = httpx.post(f"{sim.url}{CHAT}", json=body, timeout=30)
        assert answer.status_code == 200
        last = [line for line in answer.text.splitlines() if '"usage"' in line][-1]
        sizes.append(int(last.split('"prompt_tokens":')[1].split(",")[0]))
    queries, hits = (after - was for after, was in zip(counters(sim), before, strict=True))
    assert queries == sum(sizes)
    # The first prompt finds nothing; the next two find its two full blocks of 16.
    assert sizes[0] == 40 and hits == 2 * 32


def test_prefill_time_is_paid_only_for_the_tokens_not_cached(tmp_path: Path) -> None:
    """10 ms per uncached token: a 208-word prompt waits at least 2 s for its first token
    the first time; sent again, all 13 of its blocks are cached and it waits none of it
    (the bound is generous: a loaded machine adds milliseconds, not seconds)."""
    prompt = " ".join(words(208, "prefill-"))
    body = {"model": "sim-model", "prompt": prompt, "max_tokens": 1}
    with run_simulator(tmp_path, "--prefill-ms-per-1k-tokens", "10000") as sim:
        times = []
        for _ in range(2):
            started = time.monotonic()
            answer = httpx.post(f"{sim.url}/v1/completions", json=body, timeout=60)
            times.append(time.monotonic() - started)
            assert answer.status_code == 200
        assert times[0] >= 2.08
        assert times[1] < times[0] - 1.0, times  # at least half the prefill skipped
        assert counters(sim) == (416, 208)
