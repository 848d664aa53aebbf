"""The image, the one-host stack and the README's Deploy section, without a Docker engine.

The Docker engine does not run on the test machines, so the image is never
built and no container starts here. What is checked instead:

- `docker-compose config` (Debian's docker-compose 1.29, which needs no engine)
  resolves docker-compose.yml for both profiles, and stops naming the variable
  when a secret is missing from the env file.
- The Dockerfile, read as text: two stages, a fixed non-root user, the health
  check on /healthz, port 8080, no secret in ENV or ARG; .dockerignore keeps all
  but the package out of the build context.
- A rehearsal of the stack on loopback: redis-server, the simulator started with
  the compose file's own arguments, and the gateway with deploy/compose/gateway.yaml
  and the compose file's environment, only the service host names mapped to
  127.0.0.1. The image's HEALTHCHECK command and the upstream's compose health
  check run against them, and so do the README's `docker compose exec gateway`
  commands (create a key, check the gateway).
- Every repo path, `vllm-gateway`, `sky` and `docker compose` command of the
  README's Deploy section exists, down to each option (sky from .venv-sky).
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.cli import build_parser
from gateway.settings import load_settings
from tests.servers import Process, RedisServer, free_port, run_command

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


def test_each_profile_resolves_with_one_upstream_at_vllm_8000(tmp_path: Path) -> None:
    for profile in PROFILES:
        services = active(resolved(tmp_path, profile), profile)
        assert {"gateway", "redis", "prometheus", "grafana"} <= services.keys(), profile
        upstreams = [
            name
            for name, service in services.items()
            if "vllm" in service.get("networks", {}).get("default", {}).get("aliases", [])
        ]
        assert upstreams == [f"vllm-{profile}"], profile
        command = services[upstreams[0]]["command"]
        assert (flag(command, "--host"), flag(command, "--port")) == ("0.0.0.0", "8000")
        assert "ports" not in services[upstreams[0]], "vLLM must stay off the host's ports"


@pytest.mark.parametrize("missing", sorted(SECRETS))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_a_missing_secret_stops_compose_naming_it(tmp_path: Path, missing: str, how: str) -> None:
    values = {name: value for name, value in SECRETS.items() if name != missing}
    if how == "empty":
        values[missing] = ""
    result = run_compose(tmp_path, values, "--profile", "sim", "config")
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_no_secret_has_a_value_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name, default in re.findall(r"\$\{(\w+):?-([^}]*)\}", text):
        assert not (SECRET_NAME.search(name) and default), f"{name} has a default"
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == set(SECRETS)
    for value in SECRETS.values():
        assert value not in text


def test_the_gateway_gets_valid_settings_from_the_stack(tmp_path: Path) -> None:
    model = "Qwen/Qwen2.5-1.5B-Instruct"
    services = resolved(tmp_path, "gpu", MODEL=model)["services"]
    gateway = services["gateway"]
    config = host_path(gateway, flag(gateway["command"], "--config"))
    assert config == STACK_SETTINGS
    settings = load_settings(config, {**dockerfile_env(), **gateway["environment"]})
    assert settings.auth.pepper is not None
    assert settings.auth.pepper.get_secret_value() == SECRETS["GATEWAY_PEPPER"]
    assert [t.get_secret_value() for t in settings.admin.tokens] == [SECRETS["GATEWAY_ADMIN_TOKEN"]]
    (served,) = settings.models
    (replica,) = served.replicas
    assert (served.name, replica.url) == (model, "http://vllm:8000")
    assert replica.api_key is not None
    assert replica.api_key.get_secret_value() == SECRETS["VLLM_API_KEY"]
    assert flag(services["vllm-gpu"]["command"], "--model") == model
    assert flag(services["vllm-sim"]["command"], "--model") == model
    # Both upstreams require the key the gateway sends them.
    assert services["vllm-gpu"]["environment"]["VLLM_API_KEY"] == SECRETS["VLLM_API_KEY"]
    assert flag(services["vllm-sim"]["command"], "--api-key") == SECRETS["VLLM_API_KEY"]
    assert (settings.auth.key_store.backend, settings.limits.backend) == ("redis", "redis")
    assert settings.limits_redis_url == "redis://redis:6379/0"
    assert (settings.listen.host, settings.metrics.listener) == ("0.0.0.0", "admin")
    # The admin listener (with /metrics) stays on the stack's network.
    assert settings.admin.listen is not None
    admin_port = settings.admin.listen.port
    assert gateway["environment"]["VLLM_GATEWAY_URL"] == f"http://127.0.0.1:{admin_port}"
    assert all(port["target"] != admin_port for port in gateway["ports"])
    assert gateway["ports"][0]["target"] == settings.listen.port == exposed_port()
    # The file holds no secret: they all come from the environment.
    assert not SECRET_NAME.search(re.sub(r"(?m)#.*$", "", STACK_SETTINGS.read_text()))


def test_every_mount_and_scrape_target_exists(tmp_path: Path) -> None:
    config = resolved(tmp_path, "sim")
    services = config["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"
                assert Path(source).is_relative_to(REPO), f"{name}: {source}"
            else:
                assert source in config["volumes"], f"{name}: {source}"
        if "build" in service:
            assert (Path(service["build"]["context"]) / "Dockerfile").is_file()
    stack = yaml.safe_load(STACK_SETTINGS.read_text())
    assert stack["metrics"]["listener"] == "admin"
    listens = {"gateway": stack["admin"]["listen"]["port"], "vllm": 8000, "prometheus": 9090}
    prometheus = services["prometheus"]
    scrape = yaml.safe_load(host_path(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"gateway:{listens['gateway']}", "vllm:8000"}
    for target in targets:
        host, port = target.split(":")
        assert listens[host] == int(port), target
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["url"] == f"http://prometheus:{listens['prometheus']}"
    dashboards = host_path(grafana, "/var/lib/grafana/dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).name).is_file()


def test_the_stack_persists_and_pins(tmp_path: Path) -> None:
    services = resolved(tmp_path, "gpu")["services"]
    redis = services["redis"]
    assert flag(redis["command"], "--appendonly") == "yes"
    assert any(volume.endswith(":/data:rw") for volume in redis["volumes"])
    gpu = services["vllm-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(":/root/.cache/huggingface" in volume for volume in gpu["volumes"])
    # One vLLM release in the repo: the compose stack's is the SkyPilot task's.
    task = yaml.safe_load((REPO / "sky" / "vllm.sky.yaml").read_text())
    assert task["resources"]["image_id"] == f"docker:{gpu['image']}"
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":v?\d+\.\d+", image) or image == "vllm-gateway:local", name
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"


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


def test_the_image_is_multi_stage_and_slim() -> None:
    steps = dockerfile()
    args = dict(a.split("=", 1) for keyword, a in steps if keyword == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    froms = [a for keyword, a in steps if keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # The [skypilot] extra only when asked for: --build-arg EXTRAS=skypilot.
    assert args["EXTRAS"] == '""'
    assert any("${EXTRAS:+[$EXTRAS]}" in a for keyword, a in steps if keyword == "RUN")
    # The final stage installs the first stage's wheels, and builds nothing itself.
    final = " ".join(a for keyword, a in final_stage() if keyword == "RUN")
    assert "--mount=type=bind,from=build,source=/wheels" in final and "--no-index" in final
    assert not re.search(r"apt-get|gcc|build-essential", final)
    assert [keyword for keyword, _ in final_stage()].count("COPY") == 0


def test_the_image_runs_the_gateway_as_a_fixed_non_root_user(tmp_path: Path) -> None:
    final = final_stage()
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}(:[1-9]\d{3,})?", users[-1])
    assert final[-2] == ("ENTRYPOINT", '["vllm-gateway"]')
    keyword, cmd = final[-1]
    assert keyword == "CMD"
    command = json.loads(cmd)
    assert command[:2] == ["serve", "--config"]
    gateway = resolved(tmp_path, "sim")["services"]["gateway"]
    assert command == gateway["command"]
    assert dockerfile_env()["VGW_LISTEN__HOST"] == "0.0.0.0"
    assert exposed_port() == 8080


def healthcheck_command() -> list[str]:
    (args,) = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    command: list[str] = json.loads(args[args.index("CMD ") + 4 :])
    return command


def test_the_image_healthcheck_asks_healthz() -> None:
    url = httpx.URL(dockerfile_env()["HEALTHCHECK_URL"])
    assert (url.host, url.port, url.path) == ("127.0.0.1", exposed_port(), "/healthz")
    assert "HEALTHCHECK_URL" in " ".join(healthcheck_command())


def test_no_secret_is_baked_into_the_image() -> None:
    for keyword, args in dockerfile():
        if keyword not in ("ENV", "ARG"):
            continue
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            assert not SECRET_NAME.search(name), word
            assert not re.fullmatch(r"[A-Za-z0-9+/_=-]{24,}", value), word


def ignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching PATH or one of its parents decides."""
    parts = path.split("/")
    decision = False
    for rule in rules:
        negated, pattern = rule.startswith("!"), rule.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = re.sub(r"\\\[(.*?)\\\]", r"[\1]", regex)
        prefixes = ("/".join(parts[: i + 1]) for i in range(len(parts)))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            decision = not negated
    return decision


def test_the_build_context_is_only_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".git", ".venv/bin/python", ".venv-sky", ".env", "data/keys.db", "tests"):
        assert ignored(path, rules), path
    for path in (".pytest_cache", ".mypy_cache", "gateway/cli/__pycache__/serve.cpython-311.pyc"):
        assert ignored(path, rules), path
    sources = [word for kw, args in dockerfile() if kw == "COPY" for word in args.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "gateway"]
    for source in [*sources, "gateway/cli/__init__.py", "gateway/limits/__init__.py"]:
        assert not ignored(source, rules), source
        assert (REPO / source).exists(), source


# The stack rehearsed on loopback


@dataclass
class Rehearsal:
    services: dict[str, Any]
    gateway: Process
    sim: Process
    # The gateway container's environment, its host names mapped to loopback.
    env: dict[str, str]


def on_loopback(command: list[str], port: int) -> list[str]:
    mapped = list(command)
    mapped[mapped.index("--host") + 1] = "127.0.0.1"
    mapped[mapped.index("--port") + 1] = str(port)
    return mapped


@pytest.fixture(scope="module")
def rehearsal(module_tmp: Path) -> Iterator[Rehearsal]:
    """The sim profile's processes as compose starts them, minus Docker."""
    services = resolved(module_tmp, "sim")["services"]
    redis = RedisServer(module_tmp)
    redis.start()
    sim_port, port, admin_port = free_port(), free_port(), free_port()
    sim_command = on_loopback(services["vllm-sim"]["command"], sim_port)
    gateway = services["gateway"]
    command = list(gateway["command"])
    command[command.index("--config") + 1] = str(host_path(gateway, flag(command, "--config")))
    url = f"http://127.0.0.1:{port}"
    env = {**dockerfile_env(), **gateway["environment"]}
    env |= {
        "VGW_MODELS": env["VGW_MODELS"].replace("http://vllm:8000", f"http://127.0.0.1:{sim_port}"),
        "VGW_AUTH__KEY_STORE__REDIS_URL": redis.url,
        "VGW_LISTEN__HOST": "127.0.0.1",
        "VGW_LISTEN__PORT": str(port),
        "VGW_ADMIN__LISTEN__HOST": "127.0.0.1",
        "VGW_ADMIN__LISTEN__PORT": str(admin_port),
        "VLLM_GATEWAY_URL": f"http://127.0.0.1:{admin_port}",
        "HEALTHCHECK_URL": f"{url}/healthz",
    }
    try:
        with (
            run_command(sim_command, sim_port, module_tmp / "sim.log") as sim,
            run_command(command, port, module_tmp / "gateway.log", env) as process,
        ):
            yield Rehearsal(services, process, sim, env)
    finally:
        redis.stop()


def run_probe(command: list[str], **env: str) -> int:
    """A health-check command, `python` being this interpreter; its exit status."""
    assert command[0] in ("python", "python3"), command
    full_env = {"PATH": os.environ["PATH"], **env}
    run = subprocess.run([sys.executable, *command[1:]], env=full_env, timeout=30, check=False)
    return run.returncode


def test_the_image_healthcheck_passes_only_while_the_gateway_serves(rehearsal: Rehearsal) -> None:
    assert run_probe(healthcheck_command(), HEALTHCHECK_URL=rehearsal.env["HEALTHCHECK_URL"]) == 0
    gone = f"http://127.0.0.1:{free_port()}/healthz"
    assert run_probe(healthcheck_command(), HEALTHCHECK_URL=gone) != 0


def test_the_upstream_healthcheck_follows_the_engine(rehearsal: Rehearsal) -> None:
    test = rehearsal.services["vllm-sim"]["healthcheck"]["test"]
    assert rehearsal.services["vllm-gpu"]["healthcheck"]["test"] == test
    assert test[0] == "CMD"
    probe = [word.replace(":8000/", f":{rehearsal.sim.port}/") for word in test[1:]]
    assert run_probe(probe) == 0
    # /health needs no key; the model routes do.
    assert httpx.get(f"{rehearsal.sim.url}/v1/models").status_code == 401
    httpx.put(f"{rehearsal.sim.url}/sim/health", json={"status": 503}).raise_for_status()
    try:
        assert run_probe(probe) != 0
    finally:
        httpx.put(f"{rehearsal.sim.url}/sim/health", json={"status": 200}).raise_for_status()


def test_the_readme_operator_flow_runs_on_the_stack(rehearsal: Rehearsal) -> None:
    """The README's `docker compose exec gateway ...` lines, in order, in the gateway's
    environment: a key is created, then the gateway is checked with it."""
    # Ready once Redis answers and the simulator passed a health check.
    ready = httpx.get(f"{rehearsal.gateway.url}/readyz", timeout=10)
    for _ in range(60):
        if ready.status_code == 200:
            break
        time.sleep(0.25)
        ready = httpx.get(f"{rehearsal.gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    prefix = ["docker", "compose", "exec", "gateway", "vllm-gateway"]
    lines = [words[5:] for words in deploy_commands() if words[:5] == prefix]
    assert [words[:2] for words in lines][:2] == [["keys", "create"], ["check", "--url"]]
    key = ""
    for words in lines:
        args = [word.replace("http://127.0.0.1:8080", rehearsal.gateway.url) for word in words]
        args = [key if word == "$KEY" else word for word in args]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env={**os.environ, **rehearsal.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (words, result.stdout, result.stderr)
        key = next(iter(re.findall(r"^key: (vgw_\S+)$", result.stdout, re.M)), key)
    assert key


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


def commands_of(*program: str) -> list[list[str]]:
    size = len(program)
    return [words[size:] for words in deploy_commands() if tuple(words[:size]) == program]


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
