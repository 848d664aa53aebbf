"""The gateway and benchmark tasks, run with bash on a stand-in node.

The gateway task runs the real gateway and a real redis-server in front of the project's
vLLM simulator; `vllm bench serve` is a recorder.

The stand-in node and SkyPilot's loaders are in tests/sky_node.py.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from typing import Any

import httpx
import pytest

from gateway.settings import load_settings
from tests.servers import free_port, run_simulator
from tests.sky_node import (
    MODEL,
    ROOT,
    SYSTEM_PATH,
    VLLM_KEY,
    Node,
    answer,
    start,
    wait_until_up,
)

# The gateway and the benchmark -------------------------------------------------------------------

# Read as YAML this would be "pepper" (the rest a comment): it must reach the gateway as it is.
PEPPER = "pepper #sky-tests & 'quotes' 0123456789abcdef"
ADMIN = "admin-token-for-the-sky-tests-0123456789"


@pytest.fixture(scope="module")
def gateway_task(validated: dict[str, Any]) -> dict[str, Any]:
    return answer(validated, "gateway.sky.yaml")


def gateway_env(node: Node, task: dict[str, Any], **extra: str) -> dict[str, str]:
    secrets = {"GATEWAY_PEPPER": PEPPER, "GATEWAY_ADMIN_TOKEN": ADMIN, "VLLM_API_KEY": VLLM_KEY}
    env = node.env(task, **{**secrets, "GATEWAY_DATA": str(node.volume / "gateway"), **extra})
    env["PATH"] = f"{node.bin}:{SYSTEM_PATH}"
    return env


def test_gateway_task_serves_through_redis(
    node: Node, gateway_task: dict[str, Any], reaper: list[subprocess.Popen[str]]
) -> None:
    """The real gateway (from .venv, as setup installs it) and a real redis-server."""
    (node.bin / "vllm-gateway").unlink()
    env = gateway_env(node, gateway_task, DISCOVERY="static", REDIS_PORT=str(free_port()))
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    port = free_port()
    env |= {"GATEWAY_PORT": str(port), "UPSTREAM_URLS": ""}
    with run_simulator(node.tmp, "--api-key", VLLM_KEY, model=MODEL) as sim:
        env["UPSTREAM_URLS"] = sim.url
        proc, log = start(node, gateway_task["run"], env)
        reaper.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, log, f"{base}/healthz")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        created = httpx.post(f"{base}/admin/v1/keys", json={"tenant": "sky"}, headers=admin)
        assert created.status_code == 201, log.read_text()
        client = {"Authorization": f"Bearer {created.json()['key']}"}
        models = httpx.get(f"{base}/v1/models", headers=client)
        assert [m["id"] for m in models.json()["data"]] == [MODEL], models.text
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        chat = httpx.post(f"{base}/v1/chat/completions", json=body, headers=client, timeout=30)
        assert chat.status_code == 200, chat.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, log.read_text()
    out = log.read_text()
    assert "starting redis-server" in out and "2 worker(s)" in out, out
    # Redis wrote its append-only file on the volume, in the directory of this cluster
    # alone: the keys outlive the node, and no other gateway cluster writes there.
    assert list((node.volume / "gateway" / "redis" / "test-cluster").rglob("*.aof")), out


@pytest.mark.parametrize(
    ("discovery", "kind"), [("cluster", "skypilot_cluster"), ("service", "skyserve")]
)
def test_gateway_settings_for_discovery(
    node: Node, gateway_task: dict[str, Any], discovery: str, kind: str
) -> None:
    extra = {
        "SKYPILOT_API_SERVER_ENDPOINT": "https://sky.example.com",
        "REDIS_URL": "redis://r:6379/0",
    }
    env = gateway_env(node, gateway_task, DISCOVERY=discovery, **extra)
    code, out = node.run(gateway_task["run"], env)
    assert code == 0, out
    [call] = node.calls("vllm-gateway")
    assert call["argv"] == ["serve"]
    # The gateway's own loader reads what the script made of the task's variables.
    settings = load_settings(None, environ=call["env"])
    [model] = settings.models
    assert model.name == MODEL and model.api_key is not None
    assert model.api_key.get_secret_value() == VLLM_KEY
    [source] = model.discovery
    if kind == "skypilot_cluster":
        assert source.skypilot_cluster is not None
        assert (source.skypilot_cluster.cluster, source.skypilot_cluster.port) == ("vllm", 8000)
    else:
        assert source.skyserve is not None
        assert (source.skyserve.service, source.skyserve.mode) == ("vllm-svc", "replicas")
    assert settings.auth.key_store.backend == "redis" and settings.limits.backend == "redis"
    assert settings.limits_redis_url == "redis://r:6379/0" and settings.workers == 2
    assert [t.get_secret_value() for t in settings.admin.tokens] == [ADMIN]
    assert settings.auth.pepper is not None and settings.auth.pepper.get_secret_value() == PEPPER
    assert settings.listen.port == 8080 and settings.timeouts.first_byte == 600


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"DISCOVERY": "cluster"}, "asks SkyPilot's API server"),
        ({"GATEWAY_PEPPER": ""}, "GATEWAY_PEPPER is empty"),
        ({"DISCOVERY": "static"}, "DISCOVERY=static needs UPSTREAM_URLS"),
        (
            {"DISCOVERY": "static", "UPSTREAM_URLS": "10.0.0.1:8000", "SKYPILOT_CLUSTER_INFO": ""},
            "set GATEWAY_CLUSTER",
        ),
    ],
)
def test_gateway_refuses_incomplete_settings(
    node: Node, gateway_task: dict[str, Any], extra: dict[str, str], message: str
) -> None:
    code, out = node.run(gateway_task["run"], gateway_env(node, gateway_task, **extra))
    assert code == 1 and message in out, out
    assert node.calls("vllm-gateway") == []


def test_a_second_redis_on_one_clusters_directory_is_refused(
    node: Node, gateway_task: dict[str, Any]
) -> None:
    """The volume is shared: a cluster's Redis directory is locked while its Redis runs."""
    directory = node.volume / "gateway" / "redis" / "test-cluster"
    directory.mkdir(parents=True)
    env = gateway_env(node, gateway_task, DISCOVERY="static", UPSTREAM_URLS="10.0.0.1:8000")
    lock = str(directory / ".lock")
    holder = subprocess.Popen(["flock", lock, "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["flock", "-n", lock, "true"], check=False).returncode == 0:
            assert time.monotonic() < deadline, "flock did not take the lock"
            time.sleep(0.05)
        code, out = node.run(gateway_task["run"], env)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and "another redis-server uses" in out, out
    assert node.calls("vllm-gateway") == []


@pytest.fixture(scope="module")
def bench_task(validated: dict[str, Any]) -> dict[str, Any]:
    return answer(validated, "bench.sky.yaml")


def test_bench_against_the_gateway(node: Node, bench_task: dict[str, Any]) -> None:
    results = node.tmp / "results"
    env = node.env(
        bench_task,
        GATEWAY_URL="10.1.2.3:8080/v1/",
        OPENAI_API_KEY="gw-key",
        RESULTS_DIR=str(results),
    )
    code, out = node.run(bench_task["run"], env | {"RECORDER_WRITES_RESULT": "1"})
    assert code == 0, out
    [call] = node.calls("vllm")
    argv = call["argv"]
    result = argv[argv.index("--result-filename") + 1]
    assert re.fullmatch(r"gateway-\d{8}T\d{6}Z\.json", result)
    assert f"results: {results}/{result}" in out and (results / result).exists()
    assert argv == [
        "bench", "serve", "--backend", "openai-chat",
        "--base-url", "http://10.1.2.3:8080",
        "--endpoint", "/v1/chat/completions",
        "--model", MODEL, "--tokenizer", MODEL,
        "--dataset-name", "random", "--random-input-len", "1024", "--random-output-len", "256",
        "--num-prompts", "200", "--max-concurrency", "32", "--request-rate", "inf",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--result-dir", str(results), "--result-filename", result,
    ]  # fmt: skip
    # vLLM's benchmark sends OPENAI_API_KEY as the bearer token.
    assert call["env"]["OPENAI_API_KEY"] == "gw-key" and "gw-key" not in argv
    # Without the recorder writing a result, the script says so.
    again = {"GATEWAY_URL": "https://gw.example.com", "RESULTS_DIR": str(node.tmp / "again")}
    code, out = node.run(bench_task["run"], env | again)
    assert code == 1 and "vllm bench serve wrote no" in out, out
    assert node.calls("vllm")[-1]["argv"][5] == "https://gw.example.com"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"OPENAI_API_KEY": "k"}, "GATEWAY_URL is empty"),
        ({"GATEWAY_URL": "gw:8080"}, "OPENAI_API_KEY is empty"),
    ],
)
def test_bench_needs_a_url_and_a_key(
    node: Node, bench_task: dict[str, Any], extra: dict[str, str], message: str
) -> None:
    code, out = node.run(bench_task["run"], node.env(bench_task, **extra))
    assert code == 1 and message in out, out
    assert node.calls("vllm") == []
