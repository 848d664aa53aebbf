"""One local SkyPilot API server for the test session, in a scratch HOME; stopped at the end.

Starting one takes 15-20 s and a few hundred megabytes, so the tests that need
one share it: tests/test_skypilot.py asks it through the probe, and
tests/test_skypilot_gateway.py points a gateway at it. Both name this module in
`pytest_plugins` (and neither imports it, which would keep pytest from
rewriting its asserts), which makes `sky_api_server` one session fixture
rather than one per module.

The probe starts it the way the gateway would, through the SDK's first-use
start on SKYPILOT_API_SERVER_LOCAL_PORT; `sky.api_stop()` stops it at the end
of the session, and a server still running after that fails the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import free_port
from tests.skypilot_answers import harness
from tests.skypilot_answers.harness import LocalApiServer


@pytest.fixture(scope="session")
def sky_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApiServer]:
    harness.sky_python()
    tmp = tmp_path_factory.mktemp("skypilot-api-server")
    port = free_port()
    env = harness.sky_env(tmp / "home", SKYPILOT_API_SERVER_LOCAL_PORT=str(port))
    servers: dict[int, list[str]] = {}
    try:
        started = harness.probe("live", tmp, env)
        servers = harness.servers_on(port)
        yield LocalApiServer(port, env, started, servers)
    finally:
        try:
            stopped = harness.probe("stop", tmp, env)
        finally:
            leftovers = harness.kill_leftovers(port, servers)
    assert stopped == {"server_up_after_stop": False}
    assert leftovers == [], "sky.api_stop() left API server processes running (killed now)"
