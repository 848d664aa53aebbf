"""Running probe.py in .venv-sky from the test process, and cleaning up after it.

SkyPilot pins uvicorn<0.36 and click<8.2, older than what .venv resolves to,
so the SDK lives in a venv of its own: the gateway installed with its
`skypilot` extra, as a user would (scripts/install-skypilot-venv.sh). Nothing
in .venv imports `sky`; what needs it runs in a process of that venv's python.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
SKY_PYTHON = ROOT / ".venv-sky" / "bin" / "python"
# Written by the install script once pip has installed everything and `pip check` passed.
SKY_STAMP = ROOT / ".venv-sky" / ".installed-sky"
INSTALL = "bash scripts/install-skypilot-venv.sh"
# The first call starts the API server: 15-20 s on a 2-core machine, more under load.
PROBE_TIMEOUT_S = 300


@dataclass(frozen=True)
class LocalApiServer:
    port: int
    # HOME and the port: what a process needs to use this server rather than start another.
    env: dict[str, str]
    # What the probe that started it saw, and the server processes right after.
    started: dict[str, Any]
    servers: dict[int, list[str]]


def sky_python() -> Path:
    """.venv-sky's python; a failure saying how to make it when it is missing."""
    if not SKY_STAMP.exists():
        pytest.fail(
            f"{SKY_STAMP.parent} is missing or half installed: these tests run SkyPilot"
            " in a venv of its own."
            f" Run `{INSTALL}` (or `make test`, which runs it).",
            pytrace=False,
        )
    return SKY_PYTHON


def sky_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without its SKYPILOT_* settings, in a scratch HOME."""
    home.mkdir(parents=True, exist_ok=True)
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("SKYPILOT")}
    return inherited | {"HOME": str(home), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"} | extra


def probe(mode: str, tmp: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run probe.py MODE in .venv-sky; its JSON answer, or a failure carrying its output."""
    out, log = tmp / f"{mode}.json", tmp / f"{mode}.log"
    with log.open("wb") as sink:
        done = subprocess.run(
            [str(sky_python()), "-m", "tests.skypilot_answers.probe", mode, str(out), *args],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    assert done.returncode == 0, log.read_text(errors="replace")
    answer: dict[str, Any] = json.loads(out.read_text())
    return answer


def _processes() -> Iterator[tuple[int, str, int, list[str]]]:
    """Each live process: pid, state, session id and command line, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        # After the command name in parentheses: state, ppid, pgrp, session, ...
        state, _ppid, _pgrp, session = stat.rpartition(")")[2].split()[:4]
        yield int(entry.name), state, int(session), cmdline[:-1]


def servers_on(port: int) -> dict[int, list[str]]:
    """The local API servers listening on PORT, as SkyPilot starts them: pid -> command line."""
    return {
        pid: cmdline
        for pid, _state, _session, cmdline in _processes()
        if "sky.server.server" in cmdline and f"--port={port}" in cmdline
    }


def kill_leftovers(port: int, servers: Iterable[int], grace: float = 10.0) -> list[int]:
    """What is left of the API servers on PORT and of SERVERS: killed, and returned to fail on.

    The SDK starts a server in a session of its own, whose id is its pid; its
    request executors and multiprocessing helpers run in that session too.
    """
    sessions = set(servers) | set(servers_on(port))
    deadline = time.monotonic() + grace
    while True:
        left = sorted(
            pid for pid, state, session, _ in _processes() if session in sessions and state != "Z"
        )
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
