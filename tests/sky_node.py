"""A stand-in SkyPilot node for the tests of sky/: SkyPilot's own loaders run once, in
.venv-sky, for the whole session; scratch nodes with recorders on PATH; started scripts reaped.

Registered as a plugin in tests/conftest.py, so that the validation runs once for all the
test_sky_* modules rather than once per module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

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


@pytest.fixture(scope="session")
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
            "SKYPILOT_CLUSTER_INFO": json.dumps(
                {"cluster_name": "test-cluster", "cloud": "kubernetes"}
            ),
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


@pytest.fixture(scope="session")
def vllm_task(validated: dict[str, Any]) -> dict[str, Any]:
    return answer(validated, "vllm.sky.yaml")


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
