"""The SkyPilot tasks in sky/ through SkyPilot's own loaders, offline, in .venv-sky.

Every sky/*.yaml loads; a copy of each with one key misspelt fails with SkyPilot's own
message; the tasks read as SkyPilot reads them; every script and section parses.

The stand-in node and SkyPilot's loaders are in tests/sky_node.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sky_node import (
    ROOT,
    SKY,
    TASK_FILES,
    TYPOS,
    VLLM_KEY,
    answer,
)


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
