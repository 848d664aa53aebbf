"""Serve the gateway with another server stack, to compare hot-path choices by numbers.

    python bench/serve_variant.py VARIANT CONFIG

VARIANT is `uvloop-httptools` (what `vllm-gateway serve` runs), `asyncio-h11`,
`asyncio-httptools`, `uvloop-h11`, or `granian` (needs `pip install granian`);
`floor-uvicorn` and `floor-lean` serve not the gateway but `floor.py`'s bare
forwarder, with the gateway's uvicorn configuration or the lean prototype.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import uvicorn
import uvloop
from floor import bare_forwarder
from lean_protocol import serve_lean

from gateway.app import create_app
from gateway.cli.serve import uvicorn_config
from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings

UVICORN = {
    "uvloop-httptools": ("uvloop", "httptools"),
    "asyncio-h11": ("asyncio", "h11"),
    "asyncio-httptools": ("asyncio", "httptools"),
    "uvloop-h11": ("uvloop", "h11"),
}


def create() -> object:
    """The app factory granian imports (`bench.serve_variant:create`)."""
    settings = load_settings(Path(os.environ["BENCH_GATEWAY_CONFIG"]), {})
    configure_logging(settings.log)
    return create_app(settings)


def main() -> None:
    variant, config = sys.argv[1], Path(sys.argv[2])
    settings = load_settings(config, {})
    listen = settings.listen
    if variant.startswith("floor-"):
        serve_floor(variant, settings)
        return
    if variant == "granian":
        os.environ["BENCH_GATEWAY_CONFIG"] = str(config)
        beside = Path(sys.executable).parent / "granian"
        granian = str(beside) if beside.exists() else shutil.which("granian")
        if granian is None:
            sys.exit("granian is not installed: pip install granian")
        where = ["--host", listen.host, "--port", str(listen.port)]
        options = ["--interface", "asgi", "--loop", "uvloop", "--workers", "1", "--no-ws"]
        os.execv(granian, [granian, *options, *where, "--factory", "serve_variant:create"])  # noqa: S606
    loop, http = UVICORN[variant]
    configure_logging(settings.log)
    uvicorn.run(
        create_app(settings),
        host=listen.host,
        port=listen.port,
        loop=loop,
        http=http,
        ws="none",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_config=None,
    )


def serve_floor(variant: str, settings: Settings) -> None:
    """The bare forwarder to the first model's first replica, on either server."""
    app = bare_forwarder(settings.models[0].replicas[0].url)
    if variant == "floor-lean":
        uvloop.run(serve_lean(app, settings.listen.port, coalesce=False))
        return
    uvicorn.Server(uvicorn_config(settings.listen, settings.edge, app)).run()


if __name__ == "__main__":
    main()
