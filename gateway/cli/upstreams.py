"""`vllm-gateway upstreams`: each model's replicas and their health, from the admin API.

It reads <url>/admin/v1/upstreams with the same URL, admin token and TLS options
as `vllm-gateway keys`, and its exit code says whether every model can be served,
so that a script or a cron job can alert on it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence

from gateway.admin.schemas import ModelUpstreams, ReplicaOut, UpstreamsOut
from gateway.cli.admin_client import TOKEN_ENV, URL_ENV, AdminApi, run_admin
from gateway.cli.output import Output

DESCRIPTION = """\
Show each model the gateway serves and its replicas: their state, the requests
in flight to them from this gateway, their own queue and KV-cache use when
known, and how long ago their health was last checked.
"""
EXIT_CODES = f"""\
The URL and the admin token come from --url and --admin-token, else from
${URL_ENV} and ${TOKEN_ENV}.

exit codes:
  0    every model has at least one usable replica
  1    some model has no usable replica (named on stderr); or the gateway
       refused the request or could not be reached, as for `vllm-gateway keys`
  2    usage error: no URL, no admin token, a bad option
"""
COLUMNS: tuple[str, ...] = ("MODEL", "REPLICA", "STATE", "IN FLIGHT")
COLUMNS += ("WAITING", "RUNNING", "KV", "CHECKED", "SOURCE")


def run(args: argparse.Namespace) -> int:
    # As in `keys`: a client command's own variables are read at its edge.
    return run_with(args, os.environ)


def run_with(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    def action(api: AdminApi, out: Output, err: Output) -> int:
        data = api.call("GET", "upstreams")
        upstreams = UpstreamsOut.model_validate(data)
        if args.json:
            out.line(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            for line in upstreams_table(upstreams.models):
                out.line(line)
        return report_unservable(upstreams.models, err)

    return run_admin("upstreams", args, environ, action)


def report_unservable(models: Sequence[ModelUpstreams], err: Output) -> int:
    """1, after naming them, when some models have no usable replica; else 0."""
    down = [model.model for model in models if model.usable == 0]
    if not down:
        return 0
    err.line(f"no usable replica for: {', '.join(printable(name) for name in down)}")
    return 1


def upstreams_table(models: Sequence[ModelUpstreams]) -> list[str]:
    """Aligned columns, one replica a row; a model without replicas still gets one row."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for model in models:
        name = printable(model.model)
        rows += [replica_row(name, replica) for replica in model.replicas]
        if not model.replicas:
            rows.append((name, "(no replicas)", *("-",) * (len(COLUMNS) - 2)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def replica_row(model: str, replica: ReplicaOut) -> tuple[str, ...]:
    load = replica.load
    return (
        model,
        printable(replica.url),
        printable(replica.state),
        str(replica.outstanding),
        "-" if load is None else _count(load.waiting),
        "-" if load is None else _count(load.running),
        "-" if load is None or load.kv_cache is None else f"{load.kv_cache:.0%}",
        "never" if replica.last_check_age_s is None else f"{replica.last_check_age_s:.1f}s ago",
        printable(replica.source),
    )


def _count(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def printable(text: str) -> str:
    """TEXT with control characters shown as `?`: names reach a terminal, and some come
    from replicas and discovery rather than from the operator."""
    return "".join(char if char.isprintable() else "?" for char in text)
