"""The deployment files read as the tests need them, without a Docker engine: the compose
file resolved by Debian's docker-compose 1.29, the Dockerfile as instructions, and the
shell commands of the README's Deploy section as words.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
STACK_SETTINGS = REPO / "deploy" / "compose" / "gateway.yaml"
SECRETS = {
    # Digits only, as `openssl rand -hex` can give: it must still reach the gateway as text.
    "GATEWAY_PEPPER": "20" * 32,
    "GATEWAY_ADMIN_TOKEN": "c2" * 32,
    "VLLM_API_KEY": "d3" * 32,
    "GRAFANA_ADMIN_PASSWORD": "e4" * 16,
}
PROFILES = ("sim", "gpu")
SECRET_NAME = re.compile(r"PEPPER|TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL", re.I)


# docker-compose


def docker_compose() -> str:
    """Debian's docker-compose; installed with apt (under a lock) when missing and root."""
    found = shutil.which("docker-compose")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        with open("/tmp/vllm-gateway-apt.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if shutil.which("docker-compose") is None:
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                install = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
                for apt in (["apt-get", "update", "-q"], [*install, "docker-compose"]):
                    subprocess.run(apt, env=env, capture_output=True, check=False, timeout=600)
        found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose is missing: run `sudo apt-get install -y docker-compose`")
    return found


def run_compose(
    tmp_path: Path, values: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`docker-compose --env-file F ARGS` with only F's VALUES: no .env, no outer secrets."""
    env_file = tmp_path / f"env-{len(list(tmp_path.glob('env-*')))}"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    command = [docker_compose(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def resolved(tmp_path: Path, profile: str, **values: str) -> dict[str, Any]:
    result = run_compose(tmp_path, {**SECRETS, **values}, "--profile", profile, "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def active(config: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    """The services `--profile PROFILE up` starts (1.29's `config` lists them all)."""
    services: dict[str, dict[str, Any]] = config["services"]
    return {n: s for n, s in services.items() if profile in s.get("profiles", [profile])}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repo file a service's bind mount puts at CONTAINER_PATH."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if target == container_path and source.startswith("/"):
            return Path(source)
    raise AssertionError(f"nothing is mounted at {container_path}")


# The Dockerfile and .dockerignore


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def dockerfile_env() -> dict[str, str]:
    pairs = [shlex.split(args) for keyword, args in final_stage() if keyword == "ENV"]
    return dict(pair.split("=", 1) for words in pairs for pair in words)


def exposed_port() -> int:
    (port,) = [args for keyword, args in final_stage() if keyword == "EXPOSE"]
    return int(port)


def healthcheck_command() -> list[str]:
    (args,) = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    command: list[str] = json.loads(args[args.index("CMD ") + 4 :])
    return command


# The README's Deploy section


def deploy_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Deploy\n")
    return text[start : text.index("\n## ", start + 1)]


def deploy_commands() -> list[list[str]]:
    """Each shell command of the section (code blocks and inline code), as words:
    leading `VAR=value` and `export` dropped, `$(...)` taken as a command of its own."""
    section = deploy_section()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", section, re.S)
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    # Inline code of one word names a program or a file: it is not a command.
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose) if " " in span.strip()]
    commands = []
    for line in lines:
        for piece in [re.sub(r"\$\([^()]*\)", "VALUE", line), *re.findall(r"\$\(([^()]*)\)", line)]:
            words = shlex.split(piece, comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word in ("&&", "||", ";", "|"):
                    while command and (command[0] == "export" or re.match(r"\w+=", command[0])):
                        command.pop(0)
                    commands += [command] if command else []
                    command = []
                else:
                    command.append(word)
    return commands


def commands_of(*program: str) -> list[list[str]]:
    size = len(program)
    return [words[size:] for words in deploy_commands() if tuple(words[:size]) == program]
