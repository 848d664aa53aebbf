"""The load a simulator reports (flags and `PUT /sim/load`) and its `/health` switch.

Each simulator is a real process; `/metrics` is read as the gateway will read
it, through prometheus_client's parser.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, metric, run_simulator

MODEL = "sim-model"
COMPLETION = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2}
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"


@pytest.fixture(scope="module")
def shared_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp) as process:
        yield process


@pytest.fixture
def sim(shared_sim: Process) -> Iterator[Process]:
    """The shared simulator, its reported load and health put back to the defaults after."""
    yield shared_sim
    reset = {"waiting": 0, "kv_cache": None}
    assert httpx.put(f"{shared_sim.url}/sim/load", json=reset).json() == reset
    assert httpx.put(f"{shared_sim.url}/sim/health", json={"status": 200}).status_code == 200


def load(sim: Process) -> tuple[float, float, float]:
    """(waiting, running, kv-cache usage) as `/metrics` reports them."""
    return metric(sim.url, WAITING), metric(sim.url, RUNNING), metric(sim.url, KV_CACHE)


def wait_for_waiting(sim: Process, value: float, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while (current := metric(sim.url, WAITING)) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


def test_defaults_report_the_real_load(sim: Process) -> None:
    assert httpx.get(f"{sim.url}/sim/load").json() == {"waiting": 0, "kv_cache": None}
    assert httpx.get(f"{sim.url}/sim/health").json() == {"status": 200}
    assert load(sim) == (0, 0, 0)


def test_flags_set_the_reported_load(module_tmp: Path) -> None:
    flags = ("--report-waiting", "7", "--report-kv-cache", "0.25")
    with run_simulator(module_tmp, *flags) as loaded:
        assert load(loaded) == (7, 0, 0.25)
        response = httpx.get(f"{loaded.url}/sim/load")
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"waiting": 7, "kv_cache": 0.25}
        # A served request leaves the reported figures as they were.
        assert httpx.post(f"{loaded.url}/v1/completions", json=COMPLETION).status_code == 200
        assert load(loaded) == (7, 0, 0.25)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--report-waiting", "-1", "must be an integer >= 0"),
        ("--report-waiting", "2.5", "must be an integer >= 0"),
        ("--report-kv-cache", "1.5", "must be a number between 0 and 1"),
        ("--report-kv-cache", "-0.1", "must be a number between 0 and 1"),
        ("--report-kv-cache", "nan", "must be a number between 0 and 1"),
    ],
)
def test_flag_out_of_range_exits_2(flag: str, value: str, message: str) -> None:
    args = [sys.executable, "-m", "gateway", "simulate", "--port", "1", flag, value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert f"argument {flag}: {message}" in result.stderr


def test_put_load_changes_metrics_and_keeps_unnamed_fields(sim: Process) -> None:
    url = f"{sim.url}/sim/load"
    response = httpx.put(url, json={"waiting": 5, "kv_cache": 0.9})
    assert (response.status_code, response.json()) == (200, {"waiting": 5, "kv_cache": 0.9})
    assert load(sim) == (5, 0, 0.9)
    assert httpx.put(url, json={"kv_cache": 1}).json() == {"waiting": 5, "kv_cache": 1.0}
    assert httpx.put(url, json={"waiting": 2}).json() == {"waiting": 2, "kv_cache": 1.0}
    assert load(sim) == (2, 0, 1.0)
    # null gives the kv-cache figure back to the simulator: idle, so 0.
    assert httpx.put(url, json={"kv_cache": None}).json() == {"waiting": 2, "kv_cache": None}
    assert httpx.put(url, json={}).json() == {"waiting": 2, "kv_cache": None}
    assert httpx.get(url).json() == {"waiting": 2, "kv_cache": None}
    assert load(sim) == (2, 0, 0)


@pytest.mark.parametrize(
    ("body", "param", "kind"),
    [
        (b"{not json", "body.1", "Bad Request"),
        (b"", "body.0", "Bad Request"),
        (b"[1]", "body", "Bad Request"),
        (b'{"waiting": -1}', "waiting", "BadRequestError"),
        (b'{"waiting": 1.5}', "waiting", "BadRequestError"),
        (b'{"waiting": "3"}', "waiting", "BadRequestError"),
        (b'{"waiting": true}', "waiting", "BadRequestError"),
        (b'{"waiting": null}', "waiting", "BadRequestError"),
        (b'{"kv_cache": 1.01}', "kv_cache", "BadRequestError"),
        (b'{"kv_cache": NaN}', "kv_cache", "BadRequestError"),
        (b'{"kv_cache": "0.5"}', "kv_cache", "BadRequestError"),
        (b'{"kv_cache": false}', "kv_cache", "BadRequestError"),
        # Valid waiting, bad kv_cache: nothing is applied.
        (b'{"waiting": 9, "kv_cache": 2}', "kv_cache", "BadRequestError"),
        (b'{"kv": 0.5}', "kv", "BadRequestError"),
    ],
)
def test_bad_load_body_is_400_and_changes_nothing(
    sim: Process, body: bytes, param: str, kind: str
) -> None:
    before = httpx.put(f"{sim.url}/sim/load", json={"waiting": 1, "kv_cache": 0.5}).json()
    response = httpx.put(f"{sim.url}/sim/load", content=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["type"], error["param"]) == (400, kind, param)
    assert httpx.get(f"{sim.url}/sim/load").json() == before
    assert load(sim) == (1, 0, 0.5)


def test_real_requests_count_on_top_of_the_reported_waiting(module_tmp: Path) -> None:
    flags = ("--report-waiting", "3", "--max-num-seqs", "1", "--ttft-ms", "800")
    with run_simulator(module_tmp, *flags) as narrow:
        statuses: list[int] = []

        def call() -> None:
            response = httpx.post(f"{narrow.url}/v1/completions", json=COMPLETION, timeout=10)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        # One request runs, the other waits behind it: 3 reported + 1 real.
        assert wait_for_waiting(narrow, 4, 2.0) == 4
        assert (metric(narrow.url, RUNNING), metric(narrow.url, KV_CACHE)) == (1, 1.0)
        httpx.put(f"{narrow.url}/sim/load", json={"waiting": 10, "kv_cache": 0.1})
        assert load(narrow)[::2] == (11, 0.1)
        for thread in threads:
            thread.join()
        assert statuses == [200, 200]
        assert load(narrow) == (10, 0, 0.1)


def test_health_switch(sim: Process) -> None:
    response = httpx.put(f"{sim.url}/sim/health", json={"status": 503})
    assert (response.status_code, response.json()) == (200, {"status": 503})
    health = httpx.get(f"{sim.url}/health")
    assert (health.status_code, health.content) == (503, b"")
    assert httpx.get(f"{sim.url}/sim/health").json() == {"status": 503}
    # Only /health changes: the engine still serves.
    assert httpx.post(f"{sim.url}/v1/completions", json=COMPLETION).status_code == 200
    assert httpx.put(f"{sim.url}/sim/health", json={"status": 200}).json() == {"status": 200}
    health = httpx.get(f"{sim.url}/health")
    assert (health.status_code, health.content) == (200, b"")


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"status": 500}',
        b'{"status": "503"}',
        b'{"status": 503.0}',
        b'{"status": 503, "x": 1}',
    ],
)
def test_bad_health_body_is_400_and_changes_nothing(sim: Process, body: bytes) -> None:
    response = httpx.put(f"{sim.url}/sim/health", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    assert httpx.get(f"{sim.url}/health").status_code == 200


@pytest.mark.parametrize("path", ["/sim/load", "/sim/health"])
def test_other_methods_are_405(sim: Process, path: str) -> None:
    response = httpx.post(f"{sim.url}{path}", json={})
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})
    assert response.headers["allow"] == "GET, PUT"
