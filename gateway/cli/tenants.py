"""`vllm-gateway tenants`: list, show, create, update and delete tenants through the
admin API, as `vllm-gateway keys` does keys (same --url, --admin-token, --json and
exit codes: 0 done, 1 refused or unreachable, 2 usage error).

Limits take a whole number or `none` (no limit); for a tenant `0` admits nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from gateway.admin.tenant_schemas import TenantList, TenantOut
from gateway.cli import key_quotas
from gateway.cli.admin_client import AdminApi, Json, UsageError, run_admin
from gateway.cli.keys import (
    LIMIT_FLAGS,
    LIMIT_HELP,
    MODEL_LIMIT_FIELDS,
    connection_flags,
    meta_pair,
    model_list,
)
from gateway.cli.output import Output, Printer, models_text, when
from gateway.tenants.records import NAME_PATTERN

COLUMNS = ("NAME", "SOURCE", "MODELS", "RPM", "TPM", "CONCURRENCY", "QUOTAS", "UPDATED")


NONE = "none"


def count(text: str) -> int | str:
    """A whole number, or `none` for no limit."""
    if text.strip().lower() == NONE:
        return NONE
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"not a whole number (or none): {text!r}")
    return int(text)


def model_limit(text: str) -> tuple[str, str, int | None]:
    """`MODEL:FIELD=VALUE`, split at the last `:` (model names may hold one)."""
    target, sep, value = text.rpartition("=")
    model, colon, flag = target.rpartition(":")
    field = MODEL_LIMIT_FIELDS.get(flag.strip().lower())
    if not sep or not colon or not model.strip() or field is None:
        fields = ", ".join(MODEL_LIMIT_FIELDS)
        raise argparse.ArgumentTypeError(f"not MODEL:FIELD=N with FIELD one of {fields}: {text!r}")
    given = count(value)
    return model.strip(), field, given if isinstance(given, int) else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = connection_flags()
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[common], help=help, description=help)

    action("list", "list tenants, from the store and the settings")
    action("show", "show one tenant").add_argument("name")
    create = action("create", "create a tenant")
    create.add_argument("name", help=f"the tenant's name ({NAME_PATTERN})")
    _add_options(create, update=False)
    update = action("update", "change a tenant; options not given stay as they are")
    update.add_argument("name")
    _add_options(update, update=True)
    action("delete", "delete a tenant (refused while it has usable keys)").add_argument("name")


def _add_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--models", type=model_list, metavar="A,B", help="the only models its keys may use"
    )
    if update:
        models.add_argument("--all-models", action="store_true", help="allow every model")
    for flag, text in LIMIT_HELP.items():
        parser.add_argument(f"--{flag}", type=count, metavar="N", help=f"{text}; none: no limit")
    parser.add_argument(
        "--model-limit",
        type=model_limit,
        action="append",
        metavar="MODEL:FIELD=N",
        help=f"rates of one model's requests; FIELD: {', '.join(MODEL_LIMIT_FIELDS)}; repeatable",
    )
    key_quotas.add_option(parser)
    replaces = " (replaces all of it)" if update else ""
    parser.add_argument(
        "--metadata", type=meta_pair, action="extend", nargs="+", metavar="KEY=VALUE",
        help=f"metadata{replaces}",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    # A client command's own variables are read at its edge, as `keys` does.
    return run_with(args, os.environ)


def run_with(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    def action(api: AdminApi, out: Output, err: Output) -> int:
        ACTIONS[args.action](api, args, Printer(out, err, args.json))
        return 0

    return run_admin(f"tenants {args.action}", args, environ, action)


def _body(args: argparse.Namespace, current: Json) -> Json:
    body: Json = {}
    limits: Json = {}
    for flag, field in LIMIT_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            limits[field] = None if value == NONE else value
    if args.model_limit:
        models = current.get("limits", {}).get("models", {}) if current else {}
        merged = {str(m): dict(r) for m, r in models.items()}
        for model, field, value in args.model_limit:
            merged.setdefault(model, {})[field] = value
        limits["models"] = {m: r for m, r in merged.items() if any(r.values())}
    if limits:
        body["limits"] = limits
    if args.quota:
        body["quotas"] = dict(args.quota)
    if args.models is not None:
        body["models"] = args.models
    elif getattr(args, "all_models", False):
        body["models"] = None
    if args.metadata is not None:
        body["metadata"] = dict(args.metadata)
    return body


def list_tenants(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    data = api.call("GET", "tenants")
    tenants = TenantList.model_validate(data).data
    if show.as_json:
        show.json(data)
        return
    rows = [COLUMNS, *(_row(tenant) for tenant in tenants)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        show.out.line(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )


def _row(tenant: TenantOut) -> tuple[str, ...]:
    limits = tenant.limits
    quotas = [f"{k}={v}" for k, v in tenant.quotas.model_dump().items() if v is not None]
    return (
        tenant.name,
        tenant.source,
        models_text(tenant.models),
        *(_num(v) for v in (limits.requests_per_minute, limits.tokens_per_minute)),
        _num(limits.concurrent_requests),
        ",".join(quotas) or "-",
        when(None) if tenant.updated_at is None else tenant.updated_at[:19].replace("T", " "),
    )


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _details(show: Printer, data: dict[str, Any], headline: str | None = None) -> None:
    if show.as_json:
        show.json(data)
        return
    tenant = TenantOut.model_validate(data)
    if headline:
        show.out.line(headline)
    doc = tenant.model_dump()
    for name in ("name", "source", "models", "limits", "quotas", "metadata", "updated_at"):
        value = doc[name]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        show.out.line(f"{name + ':':<12} {text}")


def show_tenant(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    _details(show, api.call("GET", f"tenants/{_path(args.name)}"))


def create(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    data = api.call("POST", "tenants", {"name": args.name, **_body(args, {})})
    _details(show, data, f"Created tenant {args.name}.")


def update(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    current = api.call("GET", f"tenants/{_path(args.name)}") if args.model_limit else {}
    body = _body(args, current)
    if not body:
        raise UsageError("nothing to change: give at least one option")
    data = api.call("PATCH", f"tenants/{_path(args.name)}", body)
    _details(show, data, f"Updated tenant {args.name}.")


def delete(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    api.call("DELETE", f"tenants/{_path(args.name)}")
    if show.as_json:
        show.json({"name": args.name, "deleted": True})
    else:
        show.out.line(f"Deleted tenant {args.name}.")


def _path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"not a tenant name: {name!r}")
    return name


ACTIONS: dict[str, Callable[[AdminApi, argparse.Namespace, Printer], None]] = {
    "list": list_tenants,
    "show": show_tenant,
    "create": create,
    "update": update,
    "delete": delete,
}
