"""The vLLM task's `run:` section, run with bash on a stand-in node.

`vllm` and `ray` are recorders on PATH (argv and environment written to a file); for
readiness the recorder execs the project's vLLM simulator. What cannot run here: a GPU,
a real `vllm serve`.

The stand-in node and SkyPilot's loaders are in tests/sky_node.py.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from typing import Any

import httpx
import pytest

from tests.servers import free_port
from tests.sky_node import (
    MODEL,
    SCRIPT_TIMEOUT_S,
    VLLM_KEY,
    Node,
    start,
    wait_for_line,
)


def serve_argv(node: Node, task: dict[str, Any], **extra: str) -> tuple[list[str], dict[str, str]]:
    """Run the task's `run:`; the recorder exits 0 at once, which the script reports."""
    code, out = node.run(task["run"], node.env(task, VLLM_API_KEY=VLLM_KEY, HF_TOKEN="", **extra))
    assert code == 1 and "vllm serve exited with status 0 before it was ready" in out, out
    [call] = node.calls("vllm")
    return call["argv"], call["env"]


def test_vllm_serve_defaults(node: Node, vllm_task: dict[str, Any]) -> None:
    node.weights_done()
    argv, env = serve_argv(node, vllm_task)
    assert argv == [
        "serve", MODEL,
        "--served-model-name", MODEL,
        "--host", "0.0.0.0",
        "--port", "8000",
        "--download-dir", f"{node.volume}/hf_home/hub",
        "--tensor-parallel-size", "4",
        "--dtype", "bfloat16",
        "--max-num-seqs", "256",
        "--gpu-memory-utilization", "0.90",
        "--kv-cache-dtype", "auto",
        "--chat-template-content-format", "auto",
        "--no-trust-request-chat-template",
    ]  # fmt: skip
    # The key reaches vLLM through its environment, never on the command line.
    assert env["VLLM_API_KEY"] == VLLM_KEY and not any(VLLM_KEY in arg for arg in argv)
    assert env["HF_HOME"] == f"{node.volume}/hf_home" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_LOGGING_LEVEL"] == "INFO" and "VLLM_ATTENTION_BACKEND" not in env
    assert "HF_TOKEN" not in env


def test_the_scripts_defaults_are_the_tasks(node: Node, vllm_task: dict[str, Any]) -> None:
    node.weights_done()
    with_envs, _ = serve_argv(node, vllm_task)
    node.records.unlink()
    without_envs, _ = serve_argv(node, {**vllm_task, "envs": {}})
    assert with_envs == without_envs


def test_vllm_serve_with_every_tunable(node: Node, vllm_task: dict[str, Any]) -> None:
    node.weights_done("org/model", "abc123")
    template = node.tmp / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    argv, env = serve_argv(
        node,
        vllm_task,
        MODEL_ID="org/model", MODEL_REVISION="abc123", SERVED_MODEL_NAME="alias",
        SERVER_PORT="9001", TENSOR_PARALLEL_SIZE="2", DTYPE="float16", MAX_MODEL_LEN="16384",
        MAX_NUM_SEQS="64", GPU_MEMORY_UTILIZATION="0.85", QUANTIZATION="fp8",
        KV_CACHE_DTYPE="fp8", ATTENTION_BACKEND="FLASHINFER", CUDAGRAPH_MODE="piecewise",
        CHAT_TEMPLATE=str(template), CHAT_TEMPLATE_CONTENT_FORMAT="openai",
        TRUST_REMOTE_CODE="true", TRUST_REQUEST_CHAT_TEMPLATE="true",
        EXTRA_VLLM_ARGS="--enable-prefix-caching --seed 7", LOG_LEVEL="DEBUG",
    )  # fmt: skip
    assert argv == [
        "serve", "org/model",
        "--served-model-name", "alias",
        "--host", "0.0.0.0",
        "--port", "9001",
        "--download-dir", f"{node.volume}/hf_home/hub",
        "--tensor-parallel-size", "2",
        "--revision", "abc123",
        "--tokenizer-revision", "abc123",
        "--dtype", "float16",
        "--max-model-len", "16384",
        "--max-num-seqs", "64",
        "--gpu-memory-utilization", "0.85",
        "--quantization", "fp8",
        "--kv-cache-dtype", "fp8",
        "--attention-backend", "FLASHINFER",
        "-cc.cudagraph_mode=PIECEWISE",
        "--chat-template", str(template),
        "--chat-template-content-format", "openai",
        "--trust-remote-code",
        "--trust-request-chat-template",
        "--enable-prefix-caching", "--seed", "7",
    ]  # fmt: skip
    # vLLM 0.32 reads no VLLM_ATTENTION_BACKEND: the flag is the only way.
    assert "VLLM_ATTENTION_BACKEND" not in env and env["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_enforce_eager(node: Node, vllm_task: dict[str, Any]) -> None:
    node.weights_done()
    argv, _ = serve_argv(node, vllm_task, ENFORCE_EAGER="true")
    assert "--enforce-eager" in argv and not any(arg.startswith("-cc") for arg in argv)


@pytest.mark.parametrize(
    ("value", "present", "absent"),
    [
        (None, "--no-trust-request-chat-template", "--trust-request-chat-template"),
        ("false", "--no-trust-request-chat-template", "--trust-request-chat-template"),
        ("true", "--trust-request-chat-template", "--no-trust-request-chat-template"),
    ],
)
def test_request_chat_templates_are_refused_by_default(
    node: Node, vllm_task: dict[str, Any], value: str | None, present: str, absent: str
) -> None:
    node.weights_done()
    extra = {} if value is None else {"TRUST_REQUEST_CHAT_TEMPLATE": value}
    argv, _ = serve_argv(node, vllm_task, **extra)
    assert present in argv and absent not in argv


@pytest.mark.parametrize("gpus", ["1", "8"])
def test_tensor_parallel_is_the_gpus_per_node(
    node: Node, vllm_task: dict[str, Any], gpus: str
) -> None:
    node.weights_done()
    argv, _ = serve_argv(node, vllm_task, SKYPILOT_NUM_GPUS_PER_NODE=gpus)
    assert argv[argv.index("--tensor-parallel-size") + 1] == gpus
    assert "--pipeline-parallel-size" not in argv


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"VLLM_API_KEY": ""}, "VLLM_API_KEY is empty"),
        ({"ENFORCE_EAGER": "maybe"}, "ENFORCE_EAGER must be true or false, not 'maybe'"),
        ({"CUDAGRAPH_MODE": "SOMETIMES"}, "CUDAGRAPH_MODE must be NONE"),
        ({"ENFORCE_EAGER": "true", "CUDAGRAPH_MODE": "FULL"}, "contradicts CUDAGRAPH_MODE"),
        ({"CHAT_TEMPLATE": "no/such.jinja"}, "CHAT_TEMPLATE: no file no/such.jinja"),
        ({"TENSOR_PARALLEL_SIZE": "0"}, "TENSOR_PARALLEL_SIZE must be an integer >= 1"),
    ],
)
def test_bad_settings_stop_before_vllm(
    node: Node, vllm_task: dict[str, Any], extra: dict[str, str], message: str
) -> None:
    node.weights_done()
    env = node.env(vllm_task, **{"VLLM_API_KEY": VLLM_KEY, **extra})
    code, out = node.run(vllm_task["run"], env)
    assert code == 1 and message in out, out
    assert node.calls("vllm") == []


def test_several_nodes_share_one_vllm_through_ray(node: Node, vllm_task: dict[str, Any]) -> None:
    node.weights_done()
    ray_port = free_port()
    two = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_IPS": "127.0.0.1\n10.0.0.2"}
    argv, env = serve_argv(node, vllm_task, RAY_PORT=str(ray_port), **two)
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert env["RAY_ADDRESS"] == f"127.0.0.1:{ray_port}"
    [head] = node.calls("ray")
    assert head["argv"][:3] == ["start", "--head", f"--port={ray_port}"]
    node.records.unlink()
    # Node 1 waits for the head's Ray port, then joins it and serves nothing itself.
    with socket.create_server(("127.0.0.1", ray_port)):
        env_1 = node.env(vllm_task, VLLM_API_KEY=VLLM_KEY, RAY_PORT=str(ray_port), **two)
        code, out = node.run(vllm_task["run"], env_1 | {"SKYPILOT_NODE_RANK": "1"})
    assert code == 0, out
    [worker] = node.calls("ray")
    assert worker["argv"] == [
        "start", f"--address=127.0.0.1:{ray_port}", "--node-ip-address=10.0.0.2",
        "--disable-usage-stats", "--block",
    ]  # fmt: skip
    assert node.calls("vllm") == []


def test_ready_only_when_vllm_answers_with_the_key(
    node: Node, vllm_task: dict[str, Any], reaper: list[subprocess.Popen[str]]
) -> None:
    node.weights_done()
    port = free_port()
    env = node.env(vllm_task, VLLM_API_KEY=VLLM_KEY, SERVER_PORT=str(port))
    proc, log = start(node, vllm_task["run"], env | {"RECORDER_EXEC_SIM": "with-key"})
    reaper.append(proc)
    out = wait_for_line(proc, log, r"ready: ")
    assert f"vllm-run: ready: {MODEL} on 127.0.0.1:{port}" in out, out
    models = httpx.get(
        f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {VLLM_KEY}"}
    )
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    # SkyPilot cancelling the job: the script stops vLLM (here the simulator) with it.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_server_without_the_key_is_refused(
    node: Node, vllm_task: dict[str, Any], reaper: list[subprocess.Popen[str]]
) -> None:
    node.weights_done()
    port = free_port()
    env = node.env(vllm_task, VLLM_API_KEY=VLLM_KEY, SERVER_PORT=str(port))
    proc, log = start(node, vllm_task["run"], env | {"RECORDER_EXEC_SIM": "without-key"})
    reaper.append(proc)
    assert proc.wait(timeout=SCRIPT_TIMEOUT_S) == 1
    assert "answered /v1/models without the API key (HTTP 200, not 401)" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


# Preflight -------------------------------------------------------------------------------------
