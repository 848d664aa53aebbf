"""The `vllm-gateway` command: serve, simulate, check, keys, tenants, upstreams, usage."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import gateway.sim.cli as sim_cli
from gateway import __version__
from gateway.cli import check, keys, serve, tenants, upstreams, usage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-gateway",
        description="An authenticated, OpenAI-compatible gateway in front of vLLM servers.",
    )
    parser.add_argument("--version", action="version", version=f"vllm-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="run the gateway")
    serve.add_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve.run)

    sim_parser = commands.add_parser("simulate", help="run the vLLM-protocol simulator")
    sim_cli.add_arguments(sim_parser)
    sim_parser.set_defaults(handler=sim_cli.run)

    check_parser = commands.add_parser("check", help="smoke-test a gateway or vLLM URL")
    check.add_arguments(check_parser)
    check_parser.set_defaults(handler=check.run)

    keys_parser = commands.add_parser(
        "keys", help="manage API keys through the admin API; export or import a store"
    )
    keys.add_arguments(keys_parser)
    keys_parser.set_defaults(handler=keys.run)

    tenants_parser = commands.add_parser(
        "tenants", help="manage tenants: their limits, quotas, models and metadata"
    )
    tenants.add_arguments(tenants_parser)
    tenants_parser.set_defaults(handler=tenants.run)

    upstreams_parser = commands.add_parser(
        "upstreams",
        parents=[keys.connection_flags()],
        help="show each model's replicas and their health",
        description=upstreams.DESCRIPTION,
        epilog=upstreams.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upstreams_parser.set_defaults(handler=upstreams.run)

    usage.add_arguments(commands.add_parser("usage", help="usage and cost reports"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result
