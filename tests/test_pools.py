"""Pools of real simulators behind a real gateway: picking, health, failover, shedding."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, free_port, gateway_config, metric, run_gateway, run_simulator

MODEL = "sim-model"
CHAT = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "Route me"}]


def pool_gateway(
    tmp: Path, urls: list[str], upstreams: dict[str, object], **extra: object
) -> dict[str, object]:
    config = gateway_config(free_port(), {MODEL: urls}, **extra)
    config["upstreams"] = upstreams
    return config


def served(sim: Process) -> float:
    return metric(sim.url, "sim_http_requests_total", path=CHAT)


def chat(gateway: Process, client: httpx.Client | None = None, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 3, **fields}
    http = client or httpx
    return http.post(f"{gateway.url}{CHAT}", json=body, headers=gateway.auth, timeout=60)


async def concurrent(gateway: Process, count: int, width: int, **fields: object) -> list[int]:
    """COUNT requests, WIDTH at a time; their statuses."""
    gate = asyncio.Semaphore(width)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> int:
            async with gate:
                body = {"model": MODEL, "messages": PROMPT, "max_tokens": 3, **fields}
                url = f"{gateway.url}{CHAT}"
                response = await client.post(url, json=body, headers=gateway.auth)
                return response.status_code

        return list(await asyncio.gather(*(one() for _ in range(count))))


def wait_for_log(gateway: Process, text: str, within_s: float, seen: int = 0) -> bool:
    """Wait until TEXT is in the gateway's log more than SEEN times."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if gateway.log().count(text) > seen:
            return True
        time.sleep(0.05)
    return False


def test_the_slow_replica_gets_fewer_requests(module_tmp: Path) -> None:
    with ExitStack() as stack:
        sims = [
            stack.enter_context(run_simulator(module_tmp, "--itl-ms", str(itl)))
            for itl in (2, 10, 40)
        ]
        config = pool_gateway(module_tmp, [sim.url for sim in sims], {})
        gateway = stack.enter_context(run_gateway(module_tmp, config))
        statuses = asyncio.run(concurrent(gateway, 90, 9, max_tokens=20))
        assert statuses == [200] * 90
        fast, medium, slow = (served(sim) for sim in sims)
        assert fast > medium > slow
        assert slow < 90 / 3


def test_load_aware_picking_avoids_a_deep_queue(module_tmp: Path) -> None:
    with ExitStack() as stack:
        calm = [stack.enter_context(run_simulator(module_tmp, "--itl-ms", "5")) for _ in range(2)]
        deep = stack.enter_context(
            run_simulator(module_tmp, "--itl-ms", "5", "--report-waiting", "50")
        )
        upstreams = {"load": {"picking": "load_aware", "scrape_interval": 0.2}}
        config = pool_gateway(module_tmp, [deep.url, *(sim.url for sim in calm)], upstreams)
        gateway = stack.enter_context(run_gateway(module_tmp, config))
        time.sleep(1.0)  # a few readings of every replica's /metrics
        assert asyncio.run(concurrent(gateway, 30, 3)) == [200] * 30
        assert served(deep) == 0
        assert sum(served(sim) for sim in calm) == 30


class Load:
    """Two clients sending requests back to back; every status, with its time."""

    def __init__(self, gateway: Process) -> None:
        self.gateway = gateway
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                status = chat(self.gateway, client).status_code
                self.results.append((time.monotonic(), status))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_a_replica_that_dies_is_routed_around_and_comes_back(module_tmp: Path) -> None:
    upstreams = {"health": {"interval": 0.5, "timeout": 0.5, "unhealthy_threshold": 1}}
    with ExitStack() as stack:
        sims = [stack.enter_context(run_simulator(module_tmp)) for _ in range(3)]
        victim = sims[2]
        config = pool_gateway(module_tmp, [sim.url for sim in sims], upstreams)
        gateway = stack.enter_context(run_gateway(module_tmp, config))
        with Load(gateway) as load:
            time.sleep(1.0)
            victim.proc.kill()  # a crash: connections refused from now on
            victim.proc.wait()
            killed = time.monotonic()
            assert wait_for_log(gateway, f"replica {victim.url} is down", within_s=5)
            marked_down = time.monotonic() - killed
            time.sleep(1.0)
        # Only a request in flight on the victim when it died may fail (one per client).
        failed = [(at, status) for at, status in load.results if status != 200]
        assert len(failed) <= 2 and all(status == 502 for _, status in failed)
        assert len(load.results) > 20
        # Down within a check interval and a check's timeout (with room for a busy machine).
        assert marked_down < 0.5 + 0.5 + 2.0
        back = f"replica {victim.url} is up"
        seen = gateway.log().count(back)  # once already, at the gateway's start
        with run_simulator(module_tmp, port=victim.port) as revived:
            assert wait_for_log(gateway, back, within_s=5, seen=seen)
            assert asyncio.run(concurrent(gateway, 30, 3)) == [200] * 30
            assert served(revived) > 0


@contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and reads, but never answers: a replica that stalls."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(connection)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


def test_a_stalled_replica_does_not_hold_up_the_others(module_tmp: Path) -> None:
    upstreams = {"health": {"interval": 30, "timeout": 0.5}}
    with silent_server() as stalled, run_simulator(module_tmp) as sim:
        config = pool_gateway(
            module_tmp, [stalled, sim.url], upstreams, timeouts={"first_byte": 1.5}
        )
        with run_gateway(module_tmp, config) as gateway:

            async def main() -> list[tuple[int, str]]:
                async with httpx.AsyncClient(timeout=60) as client:
                    done: list[tuple[int, str]] = []

                    async def one() -> None:
                        body = {"model": MODEL, "messages": PROMPT, "max_tokens": 3}
                        response = await client.post(
                            f"{gateway.url}{CHAT}", json=body, headers=gateway.auth
                        )
                        code = (
                            response.json()["error"]["code"] if response.status_code != 200 else ""
                        )
                        done.append((response.status_code, code))

                    await asyncio.gather(*(one() for _ in range(6)))
                    return done

            done = asyncio.run(main())
            statuses = [status for status, _ in done]
            assert set(statuses) == {200, 504}
            # In order of completion: every answer from the live replica came before the
            # first timeout, so nothing waited on the stalled one.
            assert statuses == sorted(statuses)
            assert {code for status, code in done if status == 504} == {"upstream_timeout"}
            # Three timeouts in a row eject it: the pool keeps answering.
            for _ in range(6):
                chat(gateway)
            assert wait_for_log(gateway, f"replica {stalled} ejected", within_s=1)
            assert [chat(gateway).status_code for _ in range(5)] == [200] * 5


def test_connection_failures_are_retried_on_another_replica(module_tmp: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {"health": {"interval": 60, "unhealthy_threshold": 5}}
    with run_simulator(module_tmp) as sim:
        config = pool_gateway(module_tmp, [dead, sim.url], upstreams)
        with run_gateway(module_tmp, config) as gateway:
            assert [chat(gateway).status_code for _ in range(12)] == [200] * 12
            assert served(sim) == 12
            assert wait_for_log(gateway, f"replica {dead} ejected", within_s=1)


@pytest.mark.parametrize("status", [429, 503])
def test_load_is_shed_when_every_queue_is_deep(module_tmp: Path, status: int) -> None:
    load = {
        "scrape_interval": 0.2,
        "shed_waiting_above": 10,
        "shed_status": status,
        "shed_retry_after": 3,
    }
    with ExitStack() as stack:
        sims = [
            stack.enter_context(run_simulator(module_tmp, "--report-waiting", "20"))
            for _ in range(2)
        ]
        config = pool_gateway(module_tmp, [sim.url for sim in sims], {"load": load})
        gateway = stack.enter_context(run_gateway(module_tmp, config))
        time.sleep(1.0)
        refused = chat(gateway)
        assert refused.status_code == status
        assert refused.headers["retry-after"] == "3"
        assert refused.json()["error"]["code"] == "model_overloaded"
        assert sum(served(sim) for sim in sims) == 0
        # One replica with a short queue is enough to serve again.
        httpx.put(f"{sims[0].url}/sim/load", json={"waiting": 0}, timeout=5).raise_for_status()
        deadline = time.monotonic() + 5
        while chat(gateway).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_models_list_what_the_replicas_serve(module_tmp: Path) -> None:
    with run_simulator(module_tmp) as sim, run_simulator(module_tmp, model="lora-model") as lora:
        config = gateway_config(free_port(), {MODEL: [sim.url], "adapters": [lora.url]})
        config["upstreams"] = {"health": {"interval": 0.2}}
        with run_gateway(module_tmp, config) as gateway:
            deadline = time.monotonic() + 5
            ids: list[str] = []
            while "lora-model" not in ids:
                assert time.monotonic() < deadline
                listing = httpx.get(f"{gateway.url}/v1/models", headers=gateway.auth).json()
                ids = [card["id"] for card in listing["data"]]
                time.sleep(0.1)
            assert ids == [MODEL, "adapters", "lora-model"]
            body = {"model": "lora-model", "prompt": "hi", "max_tokens": 2}
            answer = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=gateway.auth)
            assert answer.status_code == 200
            assert served(lora) == 0  # completions, not chat
            assert metric(lora.url, "sim_http_requests_total", path="/v1/completions") == 1


def test_a_full_queue_sends_the_request_to_another_replica(module_tmp: Path) -> None:
    # One request at a time and no queue: vLLM refuses the second at once with a 503.
    busy_args = ("--max-num-seqs", "1", "--max-num-queued-reqs", "0", "--itl-ms", "50")
    with run_simulator(module_tmp, *busy_args) as busy, run_simulator(module_tmp) as free:
        direct = asyncio.run(concurrent_direct(busy, 2))
        assert sorted(direct) == [200, 503]
        config = pool_gateway(module_tmp, [busy.url, free.url], {})
        with run_gateway(module_tmp, config) as gateway:
            assert asyncio.run(concurrent(gateway, 8, 4, max_tokens=10)) == [200] * 8
            assert served(free) > 0
        # With nowhere else to go, the client gets vLLM's own 503.
        alone = pool_gateway(module_tmp, [busy.url], {})
        with run_gateway(module_tmp, alone) as gateway:
            statuses = asyncio.run(concurrent(gateway, 2, 2, max_tokens=10))
            assert sorted(statuses) == [200, 503]


async def concurrent_direct(sim: Process, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": 10}
        replies = await asyncio.gather(
            *(client.post(f"{sim.url}{CHAT}", json=body) for _ in range(count))
        )
    for reply in replies:
        if reply.status_code == 503:
            assert "on a different instance" in reply.json()["error"]["message"]
    return [reply.status_code for reply in replies]
