"""What conversation affinity buys: multi-turn chats through the gateway, with
`upstreams.affinity.by: none` and then `conversation`, in one run.

Three simulators serve the model, each with a prefix cache and a prefill time
for the prompt tokens it does not hold (`--prefill-ms-per-1k-tokens`), so a turn
sent where its conversation already ran skips the prefill of everything said
before, as on vLLM. Every conversation shares one system prompt (which every
replica soon holds, whatever the routing), opens with a long message of its own
(a pasted document), and asks TURNS questions, each with a paragraph of its own,
resending the whole conversation with the answers each time. CONCURRENCY
conversations run at once. Reported per mode: the time to first token of the
first turns and of the later ones, the replicas' own prefix-cache hit rate, and
the gateway's affinity picks.

    python bench/affinity.py [--conversations 24] [--turns 5] [--concurrency 6]
                             [--prefill-ms-per-1k 200] [--max-load 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    GATEWAY_CORE,
    LOAD_CORE,
    MODEL,
    PEPPER,
    bench_key,
    free_port,
    start,
    stop,
    wait_ready,
)

REPLICAS = 3
SYSTEM_WORDS = 400  # shared by every conversation
DOCUMENT_WORDS = 600  # each conversation's first message
QUESTION_WORDS = 80  # each later question
ANSWER_TOKENS = 120


@dataclass
class Turns:
    """Client-side times to first token, in seconds: first turns, and the others."""

    first: list[float] = field(default_factory=list)
    later: list[float] = field(default_factory=list)


def metric_sum(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def config_for(
    port: int, urls: list[str], by: str, max_load: float, work: Path
) -> tuple[Path, str]:
    key_db = work / f"keys-{port}.db"
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "models": [{"name": MODEL, "replicas": [{"url": url} for url in urls]}],
        "auth": {"pepper": PEPPER, "key_store": {"sqlite_path": str(key_db)}},
        "upstreams": {"affinity": {"by": by, "max_load": max_load}},
        "log": {"level": "warning", "format": "json"},
    }
    path = work / f"gateway-{by}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, bench_key(key_db)


async def first_token_s(
    http: httpx.AsyncClient, url: str, messages: list[dict[str, str]]
) -> tuple[float, str]:
    """One streamed turn: the time to its first content chunk, and the answer's text."""
    body = {"model": MODEL, "messages": messages, "max_tokens": ANSWER_TOKENS, "stream": True}
    started = time.perf_counter()
    ttft, text = None, []
    async with http.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                ttft = ttft or time.perf_counter() - started
                text.append(delta)
    assert ttft is not None, "no content"
    return ttft, "".join(text)


async def converse(args: argparse.Namespace, gateway: str, key: str, run: str) -> Turns:
    turns = Turns()
    gate = asyncio.Semaphore(args.concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateway}/v1/chat/completions"

    system = " ".join(f"{run}-rule{i}" for i in range(SYSTEM_WORDS))

    async def conversation(http: httpx.AsyncClient, n: int) -> None:
        document = " ".join(f"{run}-doc{n}-w{i}" for i in range(DOCUMENT_WORDS))
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Read this: {document}"},
        ]
        async with gate:
            for turn in range(args.turns):
                if turn:
                    question = " ".join(f"q{n}-{turn}-{i}" for i in range(QUESTION_WORDS))
                    messages.append({"role": "user", "content": question})
                ttft, answer = await first_token_s(http, url, messages)
                (turns.first if turn == 0 else turns.later).append(ttft)
                messages.append({"role": "assistant", "content": answer})

    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        await asyncio.gather(*(conversation(http, n) for n in range(args.conversations)))
    return turns


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--prefill-ms-per-1k", type=float, default=200.0)
    parser.add_argument("--max-load", type=float, default=1.5, help="upstreams.affinity.max_load")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-affinity-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        sims = []
        for index in range(REPLICAS):
            port = free_port()
            command = [
                "-m", "gateway", "simulate", "--port", str(port), "--model", MODEL,
                "--ttft-ms", "10", "--itl-ms", "2",
                "--prefill-ms-per-1k-tokens", str(args.prefill_ms_per_1k),
            ]  # fmt: skip
            proc = start(command, LOAD_CORE, work / f"sim-{index}.log")
            stack.callback(stop, proc)
            sims.append(f"http://127.0.0.1:{port}")
            wait_ready(f"{sims[-1]}/health", proc)
        for by in ("none", "conversation"):
            port = free_port()
            config, key = config_for(port, sims, by, args.max_load, work)
            command = ["-m", "gateway", "serve", "--config", str(config)]
            gateway_proc = start(command, GATEWAY_CORE, work / f"gateway-{by}.log")
            gateway = f"http://127.0.0.1:{port}"
            try:
                wait_ready(f"{gateway}/healthz", gateway_proc)
                queries = sum(metric_sum(s, "vllm:prefix_cache_queries_total") for s in sims)
                hits = sum(metric_sum(s, "vllm:prefix_cache_hits_total") for s in sims)
                started = time.perf_counter()
                turns = uvloop.run(converse(args, gateway, key, run=by))
                wall = time.perf_counter() - started
                queries = (
                    sum(metric_sum(s, "vllm:prefix_cache_queries_total") for s in sims) - queries
                )
                hits = sum(metric_sum(s, "vllm:prefix_cache_hits_total") for s in sims) - hits
                picks = {
                    pick: metric_sum(gateway, "gateway_affinity_picks_total", pick=pick)
                    for pick in ("first", "next")
                }
            finally:
                stop(gateway_proc)
            rows.append((by, turns, hits / queries, picks, wall))
    print(
        f"{args.conversations} conversations x {args.turns} turns, {args.concurrency} at once, "
        f"{REPLICAS} replicas, prefill {args.prefill_ms_per_1k:g} ms per 1k uncached tokens\n"
    )
    print("| affinity | TTFT p50, first turns | later turns: p50 | mean | p95 |", end="")
    print(" prefix-cache hits | picks first/next | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for by, turns, share, picks, wall in rows:
        later = turns.later
        print(
            f"| {by} | {statistics.median(turns.first) * 1000:.0f} ms "
            f"| {statistics.median(later) * 1000:.0f} ms | {statistics.mean(later) * 1000:.0f} ms "
            f"| {percentile(later, 0.95) * 1000:.0f} ms | {share:.0%} "
            f"| {picks['first']:.0f}/{picks['next']:.0f} | {wall:.1f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
