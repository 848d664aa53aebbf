from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def module_redis(module_tmp: Path) -> Iterator[RedisServer]:
    """A real redis-server with AOF on, shared by one test module."""
    directory = module_tmp / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


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


# With `pytest -n` (the Makefile's `-n auto --dist loadscope`), each test module runs on
# one worker, so its module fixtures start once; the modules whose fixtures share one
# SkyPilot API server or one validation of sky/*.yaml per session run on one worker
# together, so those start once too. They are the `test_sky*` modules.
SESSION_FIXTURES = frozenset({"validated", "sky_api_server"})
SHARED_PREFIX = "tests/test_sky"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 (only under -n)

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "skypilot" if module.startswith(SHARED_PREFIX) else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module that uses a per-session SkyPilot fixture must be named for the group."""
    for item in items:
        shared = SESSION_FIXTURES & set(getattr(item, "fixturenames", ()))
        if shared and not item.nodeid.startswith(SHARED_PREFIX):
            raise pytest.UsageError(f"{item.nodeid} uses {shared}: name its module test_sky*")
