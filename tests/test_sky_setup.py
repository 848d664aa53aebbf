"""The vLLM task's `setup:` section: preflight and the one-time weights download.

Preflight in the failures this machine really has: no GPU (no nvidia-smi), no volume, a
directory that is not a mount point, one not writable (/sys), too little disk. The passing
case and the CUDA comparison need a GPU node, so there a stand-in nvidia-smi and stand-in
torch/vllm modules play it; a stand-in huggingface_hub records the download instead.

The stand-in node and SkyPilot's loaders are in tests/sky_node.py.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.sky_node import (
    MODEL,
    SYSTEM_PATH,
    Node,
)


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
        "vllm": '__version__ = "0.32.0"\n',
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
