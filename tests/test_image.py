"""The Dockerfile and .dockerignore, read as text.

Two stages, a fixed non-root user, the health check on /healthz, port 8080, no secret in
ENV or ARG; .dockerignore keeps all but the package out of the build context.

The files are read by tests/deploy_files.py. The Docker engine does not run on the test
machines, so the image is never built and no container starts here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import httpx

from tests.deploy_files import (
    REPO,
    SECRET_NAME,
    dockerfile,
    dockerfile_env,
    exposed_port,
    final_stage,
    healthcheck_command,
    resolved,
)

# The Dockerfile and .dockerignore


def test_the_image_is_multi_stage_and_slim() -> None:
    steps = dockerfile()
    args = dict(a.split("=", 1) for keyword, a in steps if keyword == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    froms = [a for keyword, a in steps if keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # Tracing by default; the [skypilot] extra only when asked for: EXTRAS=tracing,skypilot.
    assert args["EXTRAS"] == '"tracing"'
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
