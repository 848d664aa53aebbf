"""Limits shared by three gateway processes through one real redis-server, and Redis outages."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
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

ADMIN_TOKEN = "admin-token-for-shared-limits-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PEPPER = "pepper-shared-by-three-gateways-0123456789"
FAST, SLOW = "sim-model", "slow-model"
PROMPT = [{"role": "user", "content": "Share the limits"}]
TENANT_RPM = 12


@pytest.fixture(scope="module")
def redis(module_redis: RedisServer) -> RedisServer:
    return module_redis


@pytest.fixture(scope="module")
def slow_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--itl-ms", "100", model=SLOW) as process:
        yield process


@pytest.fixture(scope="module")
def gateways(
    module_tmp: Path, sim: Process, slow_sim: Process, redis: RedisServer
) -> Iterator[list[Process]]:
    with ExitStack() as stack:
        processes = []
        for _ in range(3):
            config = gateway_config(free_port(), {FAST: [sim.url], SLOW: [slow_sim.url]})
            config["auth"] = {
                "pepper": PEPPER,
                "key_store": {"backend": "redis", "redis_url": redis.url},
            }
            config["admin"] = {"tokens": [ADMIN_TOKEN]}
            config["limits"] = {
                "backend": "redis",
                "tenants": {"team": {"requests_per_minute": TENANT_RPM}},
            }
            processes.append(stack.enter_context(run_gateway(module_tmp, config)))
        yield processes


def new_key(gateway: Process, tenant: str = "acme", **limits: object) -> str:
    body = {"tenant": tenant, "name": "shared", "limits": limits}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def chat_body(model: str = FAST, **fields: object) -> dict[str, object]:
    return {"model": model, "messages": PROMPT, "max_tokens": 3, **fields}


async def burst(gateways: list[Process], keys: list[str], count: int) -> list[int]:
    """COUNT requests at once, spread over the gateways and keys; their statuses."""
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> int:
            gateway, key = gateways[i % len(gateways)], keys[i % len(keys)]
            response = await client.post(
                f"{gateway.url}/v1/chat/completions",
                json=chat_body(),
                headers={"Authorization": f"Bearer {key}"},
            )
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_a_burst_over_three_gateways_admits_exactly_the_rpm(gateways: list[Process]) -> None:
    limit = 30
    key = new_key(gateways[0], requests_per_minute=limit)
    statuses = asyncio.run(burst(gateways, [key], 5 * limit))
    assert limit <= statuses.count(200) <= 1.01 * limit
    assert statuses.count(429) == 4 * limit


def test_a_tenant_limit_holds_for_two_keys_over_three_gateways(gateways: list[Process]) -> None:
    keys = [new_key(gateways[1], tenant="team") for _ in range(2)]
    statuses = asyncio.run(burst(gateways, keys, 5 * TENANT_RPM))
    assert TENANT_RPM <= statuses.count(200) <= 1.01 * TENANT_RPM
    assert set(statuses) == {200, 429}


def test_concurrency_holds_over_three_gateways(gateways: list[Process]) -> None:
    limit = 4
    key = new_key(gateways[2], concurrent_requests=limit)

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(i: int) -> int:
                gateway = gateways[i % 3]
                body = chat_body(SLOW, max_tokens=20, stream=True)
                headers = {"Authorization": f"Bearer {key}"}
                url = f"{gateway.url}/v1/chat/completions"
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    await response.aread()  # each admitted stream holds its slot ~2 s
                    return response.status_code

            return list(await asyncio.gather(*(one(i) for i in range(5 * limit))))

    statuses = asyncio.run(main())
    assert limit <= statuses.count(200) <= 1.01 * limit
    # The slots come back when the streams end.
    again = asyncio.run(burst(gateways, [key], limit))
    assert again == [200] * limit


def test_a_client_that_leaves_frees_its_slot_on_every_gateway(gateways: list[Process]) -> None:
    key = new_key(gateways[0], concurrent_requests=1)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateways[0].url}/v1/chat/completions"
    body = chat_body(SLOW, max_tokens=50, stream=True)
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        next(chunks)
        assert _status(gateways[1], key) == 429  # held, as seen from another gateway
    # The stream had five seconds to go: its slot comes back long before that.
    deadline = time.monotonic() + 3
    while _status(gateways[2], key) != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_tokens_per_minute_hold_over_three_gateways(gateways: list[Process]) -> None:
    limit = 3000
    key = new_key(gateways[0], tokens_per_minute=limit)
    headers = {"Authorization": f"Bearer {key}"}
    used: list[int] = []
    reserved: list[int] = []

    def client(gateway: Process, count: int) -> None:
        with httpx.Client(timeout=30) as http:
            for _ in range(count):
                url = f"{gateway.url}/v1/chat/completions"
                response = http.post(url, json=chat_body(max_tokens=10), headers=headers)
                if response.status_code == 200:
                    used.append(response.json()["usage"]["total_tokens"])
                    remaining = int(response.headers["x-ratelimit-remaining-tokens"])
                    reserved.append(limit - remaining - sum(used[:-1]))
                else:
                    assert response.status_code == 429

    per_request = 25
    threads = [
        threading.Thread(target=client, args=(g, 5 * limit // per_request // 3)) for g in gateways
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    total = sum(used)
    # Never more than the limit; and the limit was used up to less than three reservations
    # (three clients may each hold one when the last one is refused).
    assert total <= limit
    assert total > limit - 3 * max(reserved)


class Load:
    """One client sending requests back to back in a thread, keeping every status."""

    def __init__(self, gateway: Process, key: str) -> None:
        self.gateway, self.key = gateway, key
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                url = f"{self.gateway.url}/v1/chat/completions"
                self.statuses.append(
                    client.post(url, json=chat_body(), headers=headers).status_code
                )

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for(self, status: int, within_s: float) -> bool:
        start = len(self.statuses)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if status in self.statuses[start:]:
                return True
            time.sleep(0.05)
        return False


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_redis_killed_under_load(module_tmp: Path, sim: Process, policy: str) -> None:
    directory = module_tmp / f"redis-{policy}"
    directory.mkdir()
    redis = RedisServer(directory)
    redis.start()
    config = gateway_config(free_port(), {FAST: [sim.url]})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    # Keys in SQLite: only the limits depend on Redis here.
    config["limits"] = {"backend": "redis", "redis_url": redis.url, "on_backend_error": policy}
    try:
        with run_gateway(module_tmp, config) as gateway:
            key = new_key(gateway, requests_per_minute=100_000)
            with Load(gateway, key) as load:
                assert load.wait_for(200, within_s=10)
                assert redis.proc is not None
                redis.proc.kill()  # a crash, not a shutdown
                redis.proc.wait()
                redis.proc = None
                outage = 503 if policy == "closed" else 200
                assert load.wait_for(outage, within_s=10)
                time.sleep(1)
                redis.start()
                if policy == "closed":
                    assert load.wait_for(200, within_s=10)
            # Limits apply again once Redis is back: answers carry the key's quota again.
            deadline = time.monotonic() + 10
            while not _counted(gateway, key) and time.monotonic() < deadline:
                time.sleep(0.1)
            strict = new_key(gateway, requests_per_minute=2)
            assert [_status(gateway, strict) for _ in range(3)] == [200, 200, 429]
            allowed = {200, 503} if policy == "closed" else {200}
            assert set(load.statuses) <= allowed
            assert gateway.proc.poll() is None
            errors = metric(gateway.url, "gateway_limiter_backend_errors_total", outcome=policy)
            assert errors > 0
            log = gateway.log()
            # Logged, but not once per failed request.
            assert 0 < log.count("rate-limit backend unavailable") < 5
    finally:
        redis.stop()


def _answer(gateway: Process, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/chat/completions"
    return httpx.post(url, json=chat_body(), headers=headers, timeout=30)


def _status(gateway: Process, key: str) -> int:
    return _answer(gateway, key).status_code


def _counted(gateway: Process, key: str) -> bool:
    """The limiter answered for this request (fail-open admissions carry no quota)."""
    response = _answer(gateway, key)
    return response.status_code == 200 and "x-ratelimit-remaining-requests" in response.headers
