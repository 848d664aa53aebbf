"""`vllm-gateway serve`: load the settings once, then run the gateway under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Literal

import uvicorn
import uvloop
from pydantic import SecretStr

from gateway.app import create_app
from gateway.asgi import ASGIApp
from gateway.cli.shutdown import SETTLE_S, GracefulShutdown
from gateway.cli.workers import WORKER_FDS, Supervisor, inherited_sockets
from gateway.drain import Drain
from gateway.edge import EdgeConfig
from gateway.embedded import EmbeddedCredentials, embedded_credentials, embedded_simulator
from gateway.logs import configure_logging
from gateway.metrics import MULTIPROC_ENV
from gateway.settings import (
    DrainSettings,
    EdgeSettings,
    ListenSettings,
    Settings,
    SettingsError,
    load_settings,
)
from gateway.tls import server_context
from gateway.upstreams.endpoints import DiscoveryError

logger = logging.getLogger("gateway")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file (see gateway.example.yaml)")
    # Set by the supervisor for its workers: the listening sockets they inherit.
    parser.add_argument(WORKER_FDS, dest="worker_fds", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"vllm-gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    _raise_open_file_limit()
    if settings.workers > 1 and args.worker_fds is None:
        supervisor = Supervisor(settings, args.config)
        print(f"{_banner(settings, None)}\n({settings.workers} worker processes)", flush=True)
        return supervisor.run()
    sockets = inherited_sockets(args.worker_fds) if args.worker_fds else None
    # Until the servers run (and the drain takes the signal), SIGTERM is SystemExit: the
    # `with` blocks below run, so the embedded simulator stops with the gateway.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with contextlib.ExitStack() as stack:
        credentials = None
        if not settings.models:
            model = stack.enter_context(embedded_simulator())
            settings = settings.model_copy(update={"models": [model]})
            if settings.auth.pepper is None:
                credentials = embedded_credentials(settings.auth.key_store.sqlite_path)
                settings = _with_credentials(settings, credentials)
        try:
            # A worker's metrics live in the directory the supervisor gave it.
            multiprocess = bool(os.environ.get(MULTIPROC_ENV))
            app = create_app(settings, metrics_multiprocess=multiprocess)
        except DiscoveryError as exc:
            print(f"vllm-gateway: {exc}", file=sys.stderr)
            return 2
        banner = _banner(settings, credentials) if sockets is None else ""
        main = uvicorn_config(settings.listen, settings.edge, app, drain=app.drain)
        servers = [_Server(main, banner, sockets and sockets[:1])]
        if settings.admin.listen is not None:
            admin = uvicorn_config(
                settings.admin.listen, settings.edge, app.admin, lifespan="off", drain=app.drain
            )
            admin_banner = f"admin API listening on {_base(settings.admin.listen)}"
            servers.append(_Server(admin, admin_banner, sockets and sockets[1:2]))
        uvloop.run(_serve(servers, app.drain, settings.drain))
    return 0


async def _serve(servers: list[_Server], drain: Drain, settings: DrainSettings) -> None:
    """Run the listeners together; a signal drains them all (gateway/cli/shutdown.py), and
    when one stops for another reason (a failed start), all stop."""
    shutdown = GracefulShutdown(servers, drain, settings)
    shutdown.install()
    draining = asyncio.create_task(shutdown.run())
    tasks = [asyncio.create_task(server.serve(server.sockets)) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    try:
        await asyncio.gather(*tasks)
    finally:
        draining.cancel()


def _with_credentials(settings: Settings, credentials: EmbeddedCredentials) -> Settings:
    auth = settings.auth.model_copy(update={"pepper": SecretStr(credentials.pepper)})
    admin = settings.admin.model_copy(update={"tokens": [SecretStr(credentials.admin_token)]})
    return settings.model_copy(update={"auth": auth, "admin": admin})


def _raise_open_file_limit() -> None:
    """Each proxied stream holds two sockets: the usual soft limit of 1,024 open files
    would refuse connections long before `edge.max_connections`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def uvicorn_config(
    listen: ListenSettings,
    edge: EdgeSettings,
    app: ASGIApp,
    lifespan: Literal["on", "off"] = "on",
    drain: Drain | None = None,
) -> uvicorn.Config:
    tls = listen.tls
    # httptools under the gateway's own limits on request heads and connections.
    config = EdgeConfig(
        app,
        edge=edge,
        drain=drain,
        host=listen.host,
        port=listen.port,
        loop="uvloop",
        ws="none",
        interface="asgi3",
        lifespan=lifespan,
        access_log=False,
        # X-Forwarded-* from clients is not trusted: the gateway is the edge.
        proxy_headers=False,
        server_header=False,
        log_config=None,
        ssl_certfile=tls.certfile,
        ssl_keyfile=tls.keyfile,
        # The drain has ended every request before uvicorn's own shutdown runs: this
        # only bounds a connection that is slow to close.
        timeout_graceful_shutdown=SETTLE_S,
    )
    if tls.enabled:
        # uvicorn builds a context from the files; the gateway's own (TLS 1.2 at least,
        # client certificates when asked) replaces it. Done after `load`, which is where
        # uvicorn builds its own, so this works on every uvicorn from 0.33 on (SkyPilot
        # pins its dependents below 0.36).
        config.load()
        config.ssl = server_context(tls)
    return config


class _Server(uvicorn.Server):
    """Prints how to reach the gateway once it is really listening, and leaves SIGTERM
    and SIGINT to the drain (gateway/cli/shutdown.py)."""

    def __init__(
        self, config: uvicorn.Config, banner: str, sockets: Sequence[socket.socket] | None = None
    ) -> None:
        super().__init__(config)
        self._banner = banner
        # A worker's listening sockets, inherited from the supervisor; None: bind its own.
        self.sockets = list(sockets) if sockets else None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._banner:
            print(self._banner, flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's would cut the drain short and raise the signal again on the way out.
        yield

    def stop_accepting(self) -> None:
        """Close the listening sockets (uvloop detaches an inherited one, closing its fd);
        idle connections close now, busy ones after their answer."""
        if not self.started:
            return  # still starting: uvicorn's own shutdown closes what it opens
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()

    def running(self) -> int:
        return len(self.server_state.tasks)

    def cancel_running(self) -> None:
        for task in self.server_state.tasks:
            task.cancel()


def _base(listen: ListenSettings) -> str:
    scheme = "https" if listen.tls.enabled else "http"
    return f"{scheme}://{listen.host}:{listen.port}"


def _banner(settings: Settings, credentials: EmbeddedCredentials | None) -> str:
    base = _base(settings.listen)
    model = settings.models[0].name if settings.models else "MODEL"
    body = (
        f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], '
        '"max_tokens": 16}'
    )
    lines = [f"vllm-gateway is listening on {base}"]
    key = "$YOUR_API_KEY"
    if credentials is not None:
        if credentials.demo_key is not None:
            # Shown this once: the gateway keeps only its hash.
            lines.append(
                f"Admin token (also in {credentials.demo_key_file.parent}/admin-token): "
                f"{credentials.admin_token}"
            )
            lines.append(
                f"Demo API key (also in {credentials.demo_key_file}): {credentials.demo_key}"
            )
            key = credentials.demo_key
        else:
            key = f"$(cat {credentials.demo_key_file})"
    auth = f'-H "Authorization: Bearer {key}" '
    lines.append("Try it:")
    lines.append(
        f"  curl -s {base}/v1/chat/completions {auth}"
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
    return "\n".join(lines)
