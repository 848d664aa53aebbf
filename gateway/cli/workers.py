"""Several gateway worker processes on one host, sharing its listening sockets.

The supervisor binds the listeners once and starts `workers` copies of
`vllm-gateway serve` that accept on the same sockets (the kernel spreads the
connections), and starts a worker again when one dies. On SIGTERM or SIGINT
it forwards the drain to every worker (gateway/cli/shutdown.py), closes its
own copy of the listening sockets once the pre-stop delay is over (the
workers close theirs; a listener is closed only when every copy is), and waits
for all of them, at most pre_stop_delay + grace + SHUTDOWN_MARGIN_S, before it
kills what is left. A second signal is forwarded too: the workers then end
their drain at once. Every worker writes its metrics to one directory
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

from gateway.cli.shutdown import SETTLE_S, SHUTDOWN_MARGIN_S, SIGNALS
from gateway.metrics import MULTIPROC_ENV
from gateway.settings import ListenSettings, Settings

logger = logging.getLogger("gateway.workers")
WORKER_FDS = "--worker-fds"
RESTART_DELAY_S = 1.0
POLL_S = 0.1


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
        self._drain = settings.drain
        # Signals received; the drain forwards each new one once.
        self._signals = 0

    def run(self) -> int:
        for signum in SIGNALS:
            signal.signal(signum, self._signalled)
        try:
            for index in range(self._count):
                self._start(index)
            while not self._signals:
                self._reap()
                time.sleep(0.2)
            self._drain_workers()
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
            if code is None or self._signals:
                continue
            logger.error(
                "worker %d (pid %d) exited with %d; starting it again", index, proc.pid, code
            )
            _forget_metrics_of(proc.pid, self._metrics_dir)
            time.sleep(RESTART_DELAY_S)
            self._start(index)

    def _signalled(self, _signum: int, _frame: FrameType | None) -> None:
        self._signals += 1

    def _drain_workers(self) -> None:
        """Forward each signal to the workers and wait for them to exit, bounded."""
        started = time.monotonic()
        close_at = started + self._drain.pre_stop_delay
        deadline = close_at + self._drain.grace + SHUTDOWN_MARGIN_S
        forwarded = 0
        while time.monotonic() < deadline:
            if forwarded < self._signals:
                forwarded = self._signals
                self._signal_workers(signal.SIGTERM)
                if forwarded > 1:
                    # The workers end their drain at once: so do the listeners.
                    close_at = time.monotonic()
                    deadline = min(deadline, close_at + SHUTDOWN_MARGIN_S)
            if time.monotonic() >= close_at:
                self._close_sockets()
            if all(proc.poll() is not None for proc in self._workers.values()):
                return
            time.sleep(POLL_S)
        logger.error("workers still running after the drain's grace; killing them")

    def _signal_workers(self, signum: int) -> None:
        for proc in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _shutdown(self) -> None:
        """Whatever ended the supervisor: no worker outlives it."""
        self._signal_workers(signal.SIGTERM)
        for proc in self._workers.values():
            try:
                proc.wait(timeout=SETTLE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_sockets()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _forget_metrics_of(pid: int, directory: str) -> None:
    """A dead worker's live gauges (in flight, open streams) must not count any more."""
    from prometheus_client import multiprocess  # noqa: PLC0415 (the supervisor serves no metrics)

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def inherited_sockets(fds: str) -> Sequence[socket.socket]:
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
