"""Several gateway worker processes on one host, sharing its listening sockets.

The supervisor binds the listeners once and starts `workers` copies of
`vllm-gateway serve` that accept on the same sockets (the kernel spreads the
connections); it forwards SIGTERM and SIGINT to them, and starts a worker
again when one dies. Every worker writes its metrics to one directory
(PROMETHEUS_MULTIPROC_DIR), and `/metrics` in any worker adds them all up.

Workers are replicas: what they share (keys, limits, leases, revocations)
must live in Redis, which the settings check.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway.metrics import MULTIPROC_ENV
from gateway.settings import ListenSettings, Settings

logger = logging.getLogger("gateway.workers")
WORKER_FDS = "--worker-fds"
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0


def listener(listen: ListenSettings) -> socket.socket:
    sock = socket.create_server((listen.host, listen.port), backlog=2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings, config: Path | None) -> None:
        self._count = settings.workers
        self._config = config
        listens = [settings.listen] + ([settings.admin.listen] if settings.admin.listen else [])
        self._sockets = [listener(listen) for listen in listens]
        self._metrics_dir = tempfile.mkdtemp(prefix="vllm-gateway-metrics-")
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        try:
            for index in range(self._count):
                self._start(index)
            while not self._stopping:
                self._reap()
                time.sleep(0.2)
            return 0
        finally:
            self._shutdown()

    def _start(self, index: int) -> None:
        fds = ",".join(str(sock.fileno()) for sock in self._sockets)
        args = [sys.executable, "-m", "gateway", "serve", WORKER_FDS, fds]
        if self._config is not None:
            args += ["--config", str(self._config)]
        env = {**os.environ, MULTIPROC_ENV: self._metrics_dir}
        passed = [sock.fileno() for sock in self._sockets]
        self._workers[index] = subprocess.Popen(args, env=env, pass_fds=passed)
        logger.info("worker %d started (pid %d)", index, self._workers[index].pid)

    def _reap(self) -> None:
        for index, proc in list(self._workers.items()):
            code = proc.poll()
            if code is None or self._stopping:
                continue
            logger.error(
                "worker %d (pid %d) exited with %d; starting it again", index, proc.pid, code
            )
            _forget_metrics_of(proc.pid, self._metrics_dir)
            time.sleep(RESTART_DELAY_S)
            self._start(index)

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _shutdown(self) -> None:
        for proc in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self._workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sock in self._sockets:
            sock.close()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _forget_metrics_of(pid: int, directory: str) -> None:
    """A dead worker's live gauges (in flight, open streams) must not count any more."""
    from prometheus_client import multiprocess  # noqa: PLC0415 (the supervisor serves no metrics)

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def inherited_sockets(fds: str) -> Sequence[socket.socket]:
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
