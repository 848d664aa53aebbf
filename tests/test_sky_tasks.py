"""The SkyPilot tasks in sky/: SkyPilot's own loaders, and their scripts run for real.

What runs here:

- Every sky/*.yaml through SkyPilot's loaders, offline, in one process of
  .venv-sky (tests/sky_validate.py; SkyPilot is not in .venv): tasks with
  `sky.Task.from_yaml_config` (+ `validate_service_task` for the service),
  the volume with SkyPilot's volume schema. A copy of each with one key
  misspelt must fail with SkyPilot's own message.
- The tasks' `setup:` and `run:` sections, as SkyPilot loaded them, run with
  bash and the task's `envs:` plus what SkyPilot sets on a node
  (SKYPILOT_NODE_RANK, SKYPILOT_NUM_NODES, SKYPILOT_NODE_IPS,
  SKYPILOT_NUM_GPUS_PER_NODE): `vllm`, `ray` and `vllm-gateway` are replaced
  on PATH by a recorder that writes its argv and environment to a file; for
  readiness, the recorder then execs the project's vLLM simulator; the gateway
  task runs the real gateway and a real redis-server.
- Preflight in the failures this machine really has: no GPU (no nvidia-smi),
  no volume, a directory that is not a mount point, one not writable (/sys),
  too little disk. The passing case and the CUDA comparison need a GPU node,
  so there a stand-in nvidia-smi and stand-in torch/vllm modules play it.

What cannot run here: a GPU, a cloud or Kubernetes cluster, `sky launch` or
`sky serve up`, a real `vllm serve` or `vllm bench serve`, and a download from
Hugging Face (a stand-in huggingface_hub records the call instead).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.settings import load_settings
from tests.servers import free_port, run_simulator

ROOT = Path(__file__).parents[1]
SKY = ROOT / "sky"
SKY_PYTHON = ROOT / ".venv-sky" / "bin" / "python"
TASK_FILES = sorted(SKY.glob("*.yaml"))
MODEL = "Qwen/Qwen2.5-7B-Instruct"
VLLM_KEY = "vllm-key-0123456789abcdef"
SCRIPT_TIMEOUT_S = 120
# No nvidia-smi on this machine: asserted where it matters.
SYSTEM_PATH = "/usr/bin:/bin"

# One misspelt key per file: (path to the key, the misspelling, the part SkyPilot names).
TYPOS = {
    "volume.sky.yaml": (("size",), "sise", "volume"),
    "vllm.sky.yaml": (("resources", "accelerators"), "accelerator", "resources"),
    "vllm-service.sky.yaml": (
        ("service", "load_balancer", "stream_timeout_seconds"),
        "stream_timeout_secs",
        "service",
    ),
    "gateway.sky.yaml": (("secrets",), "secret", "task"),
    "bench.sky.yaml": (("num_nodes",), "num_node", "task"),
}

RECORDER = """#!{python}
# Stands in for `vllm`, `ray` or `vllm-gateway`: records the call, then maybe
# plays the part (RECORDER_EXEC_SIM: vLLM, played by the project's simulator).
import json, os, sys
record = {{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "env": dict(os.environ)}}
with open(os.environ["RECORDER_OUT"], "a") as out:
    out.write(json.dumps(record) + "\\n")
args = sys.argv[1:]
if os.environ.get("RECORDER_WRITES_RESULT") and "--result-dir" in args:
    result = os.path.join(args[args.index("--result-dir") + 1],
                          args[args.index("--result-filename") + 1])
    open(result, "w").write("{{}}")
if os.environ.get("RECORDER_EXEC_SIM") and record["prog"] == "vllm":
    sim = [sys.executable, "-m", "gateway", "simulate", "--host", "127.0.0.1",
           "--port", args[args.index("--port") + 1],
           "--model", args[args.index("--served-model-name") + 1]]
    if os.environ["RECORDER_EXEC_SIM"] == "with-key":
        sim += ["--api-key", os.environ["VLLM_API_KEY"]]
    os.execv(sys.executable, sim)
"""


# SkyPilot's loaders, in .venv-sky ---------------------------------------------------------


def rename_key(config: dict[str, Any], path: tuple[str, ...], new: str) -> None:
    parent = config
    for part in path[:-1]:
        parent = parent[part]
    items = [(new if key == path[-1] else key, value) for key, value in parent.items()]
    parent.clear()
    parent.update(items)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every sky/*.yaml and a broken copy of each, through SkyPilot's loaders in ONE process."""
    if not SKY_PYTHON.exists():
        pytest.fail(
            f"{SKY_PYTHON} is missing: SkyPilot's own loaders validate sky/*.yaml in that venv."
            " Run `bash scripts/install-skypilot-venv.sh` (or `make test`, which runs it).",
            pytrace=False,
        )
    tmp = tmp_path_factory.mktemp("sky_validate")
    jobs = [{"path": str(path), "secrets": {"VLLM_API_KEY": VLLM_KEY}} for path in TASK_FILES]
    # Without --secret VLLM_API_KEY, SkyPilot leaves the probe header as it is.
    jobs.append({"path": str(SKY / "vllm-service.sky.yaml"), "secrets": {}, "id": "no-secret"})
    for name, (path, typo, _) in TYPOS.items():
        config = yaml.safe_load((SKY / name).read_text())
        rename_key(config, path, typo)
        broken = tmp / f"broken-{name}"
        broken.write_text(yaml.safe_dump(config, sort_keys=False))
        jobs.append({"path": str(broken), "secrets": {"VLLM_API_KEY": VLLM_KEY}})
    config = yaml.safe_load((SKY / "volume.sky.yaml").read_text())
    rename_key(config, ("config", "storage_class_name"), "storage_class")
    (tmp / "broken-config-volume.sky.yaml").write_text(yaml.safe_dump(config))
    jobs.append({"path": str(tmp / "broken-config-volume.sky.yaml"), "secrets": {}})
    jobs_file = tmp / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    home = tmp / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    done = subprocess.run(
        [str(SKY_PYTHON), "tests/sky_validate.py", str(tmp / "out.json"), "--jobs", str(jobs_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answers: dict[str, Any] = json.loads((tmp / "out.json").read_text())
    answers["_home"] = str(home)
    return answers


def answer(validated: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = validated[str(SKY / name)]
    assert found["ok"], found["error"]
    return found


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda path: path.name)
def test_skypilot_loads_every_file(validated: dict[str, Any], path: Path) -> None:
    assert validated[str(path)]["ok"], validated[str(path)]["error"]


def test_validation_is_offline_and_starts_no_api_server(validated: dict[str, Any]) -> None:
    # The SDK would start a local API server on first use: its files would be here.
    assert not (Path(validated["_home"]) / ".sky" / "api_server").exists()
    assert set(TYPOS) == {path.name for path in TASK_FILES}, "a file without a broken copy"


@pytest.mark.parametrize("name", sorted(TYPOS))
def test_a_misspelt_key_fails_with_skypilots_message(validated: dict[str, Any], name: str) -> None:
    path, typo, part = TYPOS[name]
    found = next(value for key, value in validated.items() if key.endswith(f"broken-{name}"))
    assert not found["ok"]
    assert found["error"] == (
        f"InvalidSkyPilotConfigError: Invalid {part} YAML:"
        f" Instead of '{typo}', did you mean '{path[-1]}'?"
    )


def test_a_misspelt_volume_config_key_is_caught_here(validated: dict[str, Any]) -> None:
    # SkyPilot's volume schema lets anything through under `config:`; sky_validate.py does not.
    found = next(v for k, v in validated.items() if k.endswith("broken-config-volume.sky.yaml"))
    assert not found["ok"] and "'storage_class'" in found["error"], found


def test_the_vllm_task_as_skypilot_reads_it(validated: dict[str, Any]) -> None:
    task, volume = answer(validated, "vllm.sky.yaml"), answer(validated, "volume.sky.yaml")
    envs = task["envs"]
    assert volume["type"] == "k8s-pvc" and volume["config"]["access_mode"] == "ReadWriteMany"
    assert task["volumes"] == {envs["MODEL_VOLUME"]: volume["name"]}
    for resources in task["resources"]:
        [image] = resources["image_id"]
        assert re.fullmatch(r"docker:vllm/vllm-openai:v\d+\.\d+\.\d+", image), image
        # The port is declared (sky status --endpoint works) and is vLLM's port.
        assert resources["ports"] == [envs["SERVER_PORT"]]
        assert resources["cloud"] == "Kubernetes"
    assert {"VLLM_API_KEY", "HF_TOKEN"} <= set(task["secret_names"])
    assert "VLLM_API_KEY" not in envs and "HF_TOKEN" not in envs


def test_the_service_is_the_task_plus_a_service_block(validated: dict[str, Any]) -> None:
    plain = yaml.safe_load((SKY / "vllm.sky.yaml").read_text())
    served = yaml.safe_load((SKY / "vllm-service.sky.yaml").read_text())
    service = served.pop("service")
    assert {**served, "name": plain["name"]} == plain
    spec = answer(validated, "vllm-service.sky.yaml")["service"]
    assert spec["readiness_probe"]["headers"] == {"Authorization": f"Bearer {VLLM_KEY}"}
    assert spec["readiness_probe"]["path"] == "/v1/models"
    assert spec["load_balancing_policy"] == "least_load"
    # SkyServe's default per-request timeout is 120 s.
    assert spec["load_balancer"]["stream_timeout_seconds"] > 120
    assert spec["ports"] == service["ports"] == int(plain["envs"]["SERVER_PORT"])
    assert spec["replica_policy"]["min_replicas"] >= 1
    without = next(v for k, v in validated.items() if k.endswith("no-secret"))
    assert without["service"]["readiness_probe"]["headers"] == {
        "Authorization": "Bearer $VLLM_API_KEY"
    }


def test_the_gateway_and_bench_tasks_as_skypilot_reads_them(validated: dict[str, Any]) -> None:
    gateway, bench = answer(validated, "gateway.sky.yaml"), answer(validated, "bench.sky.yaml")
    assert gateway["resources"][0]["ports"] == [gateway["envs"]["GATEWAY_PORT"]]
    assert gateway["resources"][0]["accelerators"] is None
    assert set(gateway["required_secrets"]) == {"GATEWAY_PEPPER", "GATEWAY_ADMIN_TOKEN"}
    assert "VLLM_API_KEY" in gateway["secret_names"]
    assert "'.[skypilot]'" in gateway["setup"]
    assert bench["required_secrets"] == ["OPENAI_API_KEY"]
    vllm = answer(validated, "vllm.sky.yaml")
    assert bench["resources"][0]["image_id"] == vllm["resources"][0]["image_id"]


def test_scripts_parse(tmp_path: Path) -> None:
    scripts = sorted((SKY / "scripts").glob("*.sh"))
    sections = [yaml.safe_load(p.read_text()) for p in TASK_FILES]
    for index, config in enumerate(sections):
        for key in ("setup", "run"):
            if config.get(key):
                (tmp_path / f"{index}-{key}.sh").write_text(config[key])
    for script in [*scripts, *sorted(tmp_path.glob("*.sh"))]:
        done = subprocess.run(
            ["bash", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{script}: {done.stderr}"
    if shutil.which("shellcheck"):  # not installed here; CI may have it
        done = subprocess.run(["shellcheck", "-x", *map(str, scripts)], cwd=ROOT, check=False)
        assert done.returncode == 0


# Running the sections ----------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


class Node:
    """A stand-in SkyPilot node: a scratch HOME and volume, recorders on PATH."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.volume = tmp / "volume"
        self.volume.mkdir()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.records = tmp / "records.jsonl"
        recorder = self.bin / "recorder"
        recorder.write_text(RECORDER.format(python=sys.executable))
        recorder.chmod(0o755)
        for name in ("vllm", "ray", "vllm-gateway"):
            (self.bin / name).symlink_to(recorder)
        (tmp / "home").mkdir()

    def env(self, task: dict[str, Any], **extra: str) -> dict[str, str]:
        """The task's envs, what SkyPilot sets on a one-node cluster, and EXTRA."""
        return {
            **task["envs"],
            "PATH": f"{self.bin}:{SYSTEM_PATH}",
            "HOME": str(self.tmp / "home"),
            "RECORDER_OUT": str(self.records),
            "SKYPILOT_NODE_RANK": "0",
            "SKYPILOT_NUM_NODES": "1",
            "SKYPILOT_NODE_IPS": "127.0.0.1",
            "SKYPILOT_NUM_GPUS_PER_NODE": "4",
            "MODEL_VOLUME": str(self.volume),
            "READY_POLL_SECONDS": "0.2",
            **extra,
        }

    def weights_done(self, model: str = MODEL, revision: str = "main") -> Path:
        marker = self.volume / ".weights" / f"{model.replace('/', '--')}@{revision}.complete"
        marker.parent.mkdir(exist_ok=True)
        marker.write_text("model=test\n")
        return marker

    def run(self, script: str, env: dict[str, str]) -> tuple[int, str]:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    def calls(self, prog: str) -> list[dict[str, Any]]:
        if not self.records.exists():
            return []
        lines = self.records.read_text().splitlines()
        return [call for call in map(json.loads, lines) if call["prog"] == prog]


def serve_argv(node: Node, task: dict[str, Any], **extra: str) -> tuple[list[str], dict[str, str]]:
    """Run the task's `run:`; the recorder exits 0 at once, which the script reports."""
    code, out = node.run(task["run"], node.env(task, VLLM_API_KEY=VLLM_KEY, HF_TOKEN="", **extra))
    assert code == 1 and "vllm serve exited with status 0 before it was ready" in out, out
    [call] = node.calls("vllm")
    return call["argv"], call["env"]


@pytest.fixture(scope="module")
def vllm_task(validated: dict[str, Any]) -> dict[str, Any]:
    return answer(validated, "vllm.sky.yaml")


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
        "-O.cudagraph_mode=PIECEWISE",
        "--chat-template", str(template),
        "--chat-template-content-format", "openai",
        "--trust-remote-code",
        "--trust-request-chat-template",
        "--enable-prefix-caching", "--seed", "7",
    ]  # fmt: skip
    assert env["VLLM_ATTENTION_BACKEND"] == "FLASHINFER" and env["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_enforce_eager(node: Node, vllm_task: dict[str, Any]) -> None:
    node.weights_done()
    argv, _ = serve_argv(node, vllm_task, ENFORCE_EAGER="true")
    assert "--enforce-eager" in argv and not any(arg.startswith("-O") for arg in argv)


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


def start(node: Node, script: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    log = node.tmp / "script.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            ["bash", "-c", script], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
    return proc, log


def wait_for_line(proc: subprocess.Popen[str], log: Path, pattern: str) -> str:
    deadline = time.monotonic() + SCRIPT_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text()
        if re.search(pattern, text) or proc.poll() is not None:
            return text
        time.sleep(0.1)
    return log.read_text()


def wait_until_up(proc: subprocess.Popen[str], log: Path, url: str) -> None:
    deadline = time.monotonic() + SCRIPT_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200:\n{log.read_text()}")


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Started scripts: their whole process group is killed at the end, whatever happened."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


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


def preflight(node: Node, task: dict[str, Any], **extra: str) -> tuple[int, str]:
    env = node.env(task, PATH=SYSTEM_PATH, **extra)
    return node.run(task["setup"], env)


def test_preflight_no_gpu(node: Node, vllm_task: dict[str, Any]) -> None:
    assert shutil.which("nvidia-smi", path=SYSTEM_PATH) is None
    code, out = preflight(node, vllm_task, PREFLIGHT_REQUIRE_MOUNT="false")
    assert code == 1
    assert "preflight: FAIL: no GPU: nvidia-smi is not on PATH" in out
    assert "nothing was downloaded or started" in out
    assert "weights:" not in out  # setup stopped before the download


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ("absent", "the model volume is not mounted: {path} does not exist"),
        (
            "plain",
            "the model volume is not mounted: {path} is a plain directory, not a mount point",
        ),
        ("/sys", "the model volume /sys is not writable: Permission denied"),
    ],
)
def test_preflight_volume(node: Node, vllm_task: dict[str, Any], volume: str, message: str) -> None:
    path = Path(volume) if volume.startswith("/") else node.tmp / volume
    if volume == "plain":
        path.mkdir()
    code, out = preflight(node, vllm_task, MODEL_VOLUME=str(path))
    assert code == 1 and message.format(path=path) in out, out


def test_preflight_too_little_disk(node: Node, vllm_task: dict[str, Any]) -> None:
    free_gib = shutil.disk_usage(node.volume).free // 2**30
    need = str(free_gib * 2 + 1000)
    code, out = preflight(
        node, vllm_task, PREFLIGHT_REQUIRE_MOUNT="false", WEIGHTS_MIN_FREE_GB=need
    )
    assert code == 1
    found = re.search(r"not enough free space on \S+ for the weights of \S+: (\d+) GiB free", out)
    assert found is not None, out
    assert abs(int(found.group(1)) - free_gib) <= 1 and f"WEIGHTS_MIN_FREE_GB={need} needed" in out
    # Weights already on the volume need no room.
    node.weights_done()
    code, out = preflight(
        node, vllm_task, PREFLIGHT_REQUIRE_MOUNT="false", WEIGHTS_MIN_FREE_GB=need
    )
    assert "already on the volume; no free space needed" in out
    assert "not enough free space" not in out


PREFLIGHT = "bash sky/scripts/preflight.sh"


def stand_in_gpu(node: Node, driver_cuda: str) -> dict[str, str]:
    """A GPU node's nvidia-smi and image's torch/vllm, for the checks that need one."""
    smi = node.bin / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -L ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"; exit 0; fi\n'
        f'echo "| NVIDIA-SMI 570.86  Driver Version: 570.86  CUDA Version: {driver_cuda} |"\n'
    )
    smi.chmod(0o755)
    lib = node.tmp / "pylib"
    for module, text in {
        "torch": '__version__ = "2.8.0"\nclass version:\n    cuda = "12.8"\n',
        "vllm": '__version__ = "0.11.0"\n',
    }.items():
        (lib / module).mkdir(parents=True)
        (lib / module / "__init__.py").write_text(text)
    return {"PATH": f"{node.bin}:{SYSTEM_PATH}", "PYTHONPATH": str(lib)}


def test_preflight_passes_on_a_good_node(node: Node, vllm_task: dict[str, Any]) -> None:
    # /dev/shm: a mount point (tmpfs) that is writable, standing in for the PVC.
    gpu = stand_in_gpu(node, "12.9")
    env = node.env(vllm_task, MODEL_VOLUME="/dev/shm", WEIGHTS_MIN_FREE_GB="0", **gpu)
    # During `setup:` SkyPilot sets the SKYPILOT_SETUP_* variants.
    del env["SKYPILOT_NUM_GPUS_PER_NODE"], env["SKYPILOT_NODE_RANK"]
    env["SKYPILOT_SETUP_NODE_RANK"] = "0"
    code, out = node.run(PREFLIGHT, env | {"SKYPILOT_SETUP_NUM_GPUS_PER_NODE": "1"})
    assert code == 0, out
    assert "driver CUDA 12.9 >= the image's CUDA 12.8" in out and "all checks passed" in out
    assert "/dev/shm is mounted and writable" in out
    assert not list(Path("/dev/shm").glob(".preflight-*"))
    code, out = node.run(PREFLIGHT, env | {"SKYPILOT_SETUP_NUM_GPUS_PER_NODE": "8"})
    assert code == 1 and "1 GPU(s) visible, 8 requested" in out, out


def test_preflight_driver_older_than_the_image(node: Node, vllm_task: dict[str, Any]) -> None:
    gpu = stand_in_gpu(node, "12.4")
    env = node.env(vllm_task, MODEL_VOLUME="/dev/shm", SKYPILOT_NUM_GPUS_PER_NODE="1", **gpu)
    code, out = node.run(PREFLIGHT, env)
    assert code == 1
    assert "the driver supports CUDA 12.4 but the image's torch was built for CUDA 12.8" in out


# Weights, once -----------------------------------------------------------------------------------

HUB = """import json, os
def snapshot_download(**kwargs):
    with open(os.environ["HUB_CALLS"], "a") as out:
        out.write(json.dumps(kwargs) + "\\n")
    return kwargs["cache_dir"] + "/snapshot"
"""


def stand_in_hub(node: Node) -> tuple[dict[str, str], Path]:
    lib = node.tmp / "hublib" / "huggingface_hub"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(HUB)
    calls = node.tmp / "hub-calls.jsonl"
    return {"PYTHONPATH": str(lib.parent), "HUB_CALLS": str(calls)}, calls


def test_weights_are_downloaded_once(node: Node, vllm_task: dict[str, Any]) -> None:
    hub, calls = stand_in_hub(node)
    env = node.env(vllm_task, **hub)
    code, out = node.run("bash sky/scripts/weights.sh", env)
    assert code == 0, out
    [call] = map(json.loads, calls.read_text().splitlines())
    assert call["repo_id"] == MODEL and call["revision"] is None and call["force_download"] is False
    assert call["cache_dir"] == f"{node.volume}/hf_home/hub"
    assert "*.safetensors" in call["allow_patterns"] and "*.bin" not in call["allow_patterns"]
    marker = node.volume / ".weights" / f"{MODEL.replace('/', '--')}@main.complete"
    assert marker.read_text().startswith(f"model={MODEL} revision=main")
    assert not list((node.volume / ".weights").glob("*.lock"))
    code, out = node.run("bash sky/scripts/weights.sh", env)
    assert code == 0 and "already on the volume" in out
    assert len(calls.read_text().splitlines()) == 1


def test_other_nodes_wait_for_the_marker(node: Node, vllm_task: dict[str, Any]) -> None:
    hub, calls = stand_in_hub(node)
    env = node.env(vllm_task, WEIGHTS_WAIT_TIMEOUT="1", WEIGHTS_POLL_SECONDS="0.2", **hub)
    code, out = node.run("bash sky/scripts/weights.sh", env | {"SKYPILOT_NODE_RANK": "1"})
    assert code == 1 and "timed out after 1s waiting for the weights" in out, out
    # A head node of another cluster (a SkyServe replica) finds another's lock and waits too.
    lock = node.volume / ".weights" / f"{MODEL.replace('/', '--')}@main.lock"
    lock.mkdir(parents=True)
    (lock / "owner").write_text("host=replica-1 pid=7\n")
    timer = threading.Timer(1.0, node.weights_done)
    timer.start()
    try:
        code, out = node.run("bash sky/scripts/weights.sh", env | {"WEIGHTS_WAIT_TIMEOUT": "60"})
    finally:
        timer.join()
    assert code == 0 and "downloader: host=replica-1 pid=7" in out, out
    assert not calls.exists()


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
    # Redis wrote its append-only file on the volume: the keys outlive the node.
    assert list((node.volume / "gateway" / "redis").rglob("*.aof")), out


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
    ],
)
def test_gateway_refuses_incomplete_settings(
    node: Node, gateway_task: dict[str, Any], extra: dict[str, str], message: str
) -> None:
    code, out = node.run(gateway_task["run"], gateway_env(node, gateway_task, **extra))
    assert code == 1 and message in out, out
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
