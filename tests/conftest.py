from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import (
    Process,
    RedisServer,
    free_port,
    gateway_config,
    run_gateway,
    run_simulator,
)

# Fixtures shared by several modules whose expensive setup must run once per session.
pytest_plugins = ["tests.jwt_tokens", "tests.sky_node"]


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def sim(module_tmp: Path) -> Iterator[Process]:
    """A simulator serving `sim-model`, shared by one test module."""
    with run_simulator(module_tmp) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    """A gateway in front of `sim`, serving it as `sim-model`."""
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    with run_gateway(module_tmp, config) as process:
        yield process


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server with AOF on, its files in the test's own directory."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Fixtures that start something once per session for several modules. With
# `pytest -n`, every module that uses one runs on the same worker, so it starts once.
SESSION_GROUPS = {"validated": "skypilot", "sky_api_server": "skypilot"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep each module on one worker (its module fixtures start once), and the modules
    that share a session fixture together (`--dist loadgroup`, see the Makefile)."""
    groups: dict[str, str] = {}
    for item in items:
        module = item.module.__name__ if item.module else item.nodeid
        for name in getattr(item, "fixturenames", ()):
            groups[module] = SESSION_GROUPS.get(name) or groups.get(module, module)
    for item in items:
        module = item.module.__name__ if item.module else item.nodeid
        item.add_marker(pytest.mark.xdist_group(groups.get(module, module)))
