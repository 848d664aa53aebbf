"""`vllm-gateway keys`: create, list, get, update, revoke and rotate API keys.

`keys export` and `keys import` work on the store itself (gateway/cli/keys_transfer.py);
every other action talks to the gateway's admin API at <url>/admin/v1. The URL and the admin token
come from --url and --admin-token, else from $VLLM_GATEWAY_URL and
$VLLM_GATEWAY_ADMIN_TOKEN. Exit 0 when done, 1 when the gateway refuses or cannot
be reached, 2 on a usage error. The admin token goes out only in the Authorization
header, and every line printed passes through `Output`, which blanks it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from gateway.admin.schemas import KEY_ID_PATTERN, KeyPage
from gateway.cli import key_quotas, keys_transfer
from gateway.cli.admin_client import TOKEN_ENV, URL_ENV, AdminApi, Json, UsageError, run_admin
from gateway.cli.output import Output, Printer

PAGE_SIZE = 100
_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Flag (argparse dest) -> field of the API's `limits`.
LIMIT_FLAGS = {
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "concurrency": "concurrent_requests",
    "max_tokens": "max_tokens",
    "max_batch": "max_batch",
}
LIMIT_HELP = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrency": "concurrent requests",
    "max-tokens": "max_tokens per request",
    "max-batch": "sequences per request (prompts x n, or embedding inputs)",
}
# FIELD of --model-limit MODEL:FIELD=VALUE -> field of a model's rates; max_tokens is key-wide.
MODEL_LIMIT_FIELDS = {flag: LIMIT_FLAGS[flag] for flag in ("rpm", "tpm", "concurrency")}
ModelLimits = dict[str, dict[str, int | None]]


# Argument types: each raises ArgumentTypeError, which argparse turns into exit 2.


def duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s` or plain seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration like 30d, 12h, 90m or 3600s: {text!r}")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def moment(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {text.strip()}Z")
    return value


def limit(text: str) -> int:
    """A positive integer; `0` or `none` means no limit."""
    if text.strip().lower() == "none":
        return 0
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"not a whole number (or none): {text!r}")
    return int(text)


def model_limit(text: str) -> tuple[str, str, int | None]:
    """`MODEL:FIELD=VALUE` as (model, API field, value); split at the last `:`, since
    model names may hold one (`llama3:8b:rpm=10`)."""
    target, sep, value = text.rpartition("=")
    model, colon, flag = target.rpartition(":")
    if not sep or not colon or not model.strip():
        raise argparse.ArgumentTypeError(f"not MODEL:FIELD=VALUE: {text!r}")
    field = MODEL_LIMIT_FIELDS.get(flag.strip().lower())
    if field is None:
        fields = ", ".join(MODEL_LIMIT_FIELDS)
        raise argparse.ArgumentTypeError(f"FIELD is one of {fields}, not {flag!r}: {text!r}")
    return model.strip(), field, limit(value) or None


def model_list(text: str) -> list[str]:
    models = [name.strip() for name in text.split(",") if name.strip()]
    if not models:
        raise argparse.ArgumentTypeError("give at least one model name")
    return models


def meta_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return name, value


def key_id(text: str) -> str:
    if not re.match(KEY_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(f"not a key id (16 characters a-z, 2-7): {text!r}")
    return text


def connection_flags() -> argparse.ArgumentParser:
    """Flags every action takes; on each action, so they may follow it: `keys list --json`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the gateway's base URL (default: ${URL_ENV})")
    common.add_argument(
        "--admin-token",
        help=f"admin token (default: ${TOKEN_ENV}; prefer it: flags show in `ps`)",
    )
    tls = common.add_mutually_exclusive_group()
    tls.add_argument("--cacert", metavar="PATH", help="CA bundle to verify HTTPS against")
    tls.add_argument("--insecure", action="store_true", help="do not verify HTTPS certificates")
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    return common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = connection_flags()
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[common], help=help, description=help)

    create = action("create", "create a key and print it, once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    _add_key_options(create, update=False)
    listing = action("list", "list keys")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument(
        "--limit",
        type=int,
        default=PAGE_SIZE,
        choices=range(1, 1001),
        metavar="N",
        help="keys per page, 1-1000 (default: %(default)s)",
    )
    listing.add_argument("--cursor", help="start after this key id (from a previous page)")
    listing.add_argument("--all", action="store_true", help="follow the pages to the end")
    action("get", "show one key").add_argument("id", type=key_id)
    update = action("update", "change a key; options not given stay as they are")
    update.add_argument("id", type=key_id)
    update.add_argument("--name")
    _add_key_options(update, update=True)
    action("revoke", "revoke a key for good").add_argument("id", type=key_id)
    rotate = action("rotate", "give a key a new secret and print it, once")
    rotate.add_argument("id", type=key_id)
    rotate.add_argument(
        "--grace",
        type=duration,
        default=timedelta(0),
        help="how long the old secret keeps working, e.g. 1h (default: 0s)",
    )
    keys_transfer.add_actions(actions)


def _add_key_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--models", type=model_list, metavar="A,B", help="allowed models")
    if update:
        models.add_argument("--all-models", action="store_true", help="allow every model")
    for flag, text in LIMIT_HELP.items():
        parser.add_argument(f"--{flag}", type=limit, metavar="N", help=f"{text}; 0: none")
    parser.add_argument(
        "--model-limit",
        type=model_limit,
        action="append",
        metavar="MODEL:FIELD=N",
        help=f"a limit on one model's requests, on top of the key's; FIELD: "
        f"{', '.join(MODEL_LIMIT_FIELDS)}; repeatable; N 0: none",
    )
    key_quotas.add_option(parser)
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=duration, metavar="30d|12h|3600s")
    expiry.add_argument("--expires-at", type=moment, metavar="ISO", help="e.g. 2030-01-01T00:00Z")
    if update:
        expiry.add_argument("--no-expiry", action="store_true", help="the key never expires")
    replaces = " (replaces all of it)" if update else ""
    parser.add_argument(
        "--metadata",
        type=meta_pair,
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help=f"metadata{replaces}",
    )


def run(args: argparse.Namespace) -> int:
    if args.action in ("export", "import"):
        return keys_transfer.run(args)
    # STYLE.md keeps os.environ in gateway.settings; a client command's own variables are
    # read here, at its edge, as `check` reads OPENAI_API_KEY.
    return run_with(args, os.environ)


def run_with(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    def action(api: AdminApi, out: Output, err: Output) -> int:
        ACTIONS[args.action](api, args, Printer(out, err, args.json))
        return 0

    return run_admin(f"keys {args.action}", args, environ, action)


def key_changes(args: argparse.Namespace) -> Json:
    """The models, expiry and metadata options given, as API fields."""
    body: Json = {}
    if args.models is not None:
        body["models"] = args.models
    elif getattr(args, "all_models", False):
        body["models"] = None
    if args.expires_in is not None:
        body["expires_at"] = (datetime.now(UTC) + args.expires_in).isoformat()
    elif args.expires_at is not None:
        body["expires_at"] = args.expires_at.isoformat()
    elif getattr(args, "no_expiry", False):
        body["expires_at"] = None
    if args.metadata is not None:
        body["metadata"] = dict(args.metadata)
    return body


def given_limits(args: argparse.Namespace) -> dict[str, int | None]:
    return {
        field: getattr(args, flag) or None
        for flag, field in LIMIT_FLAGS.items()
        if getattr(args, flag) is not None
    }


def merged_model_limits(current: object, args: argparse.Namespace) -> ModelLimits:
    """`current` per-model limits (as the API gives them) with the --model-limit ones on top;
    a model left with no limit at all is dropped."""
    merged: ModelLimits = {}
    if isinstance(current, dict):
        merged = {str(m): dict(r) for m, r in current.items() if isinstance(r, dict)}
    for model, field, value in args.model_limit or ():
        merged.setdefault(model, {})[field] = value
    return {model: rates for model, rates in merged.items() if any(rates.values())}


def create(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    limits: Json = given_limits(args)
    if args.model_limit:
        limits["models"] = merged_model_limits({}, args)
    if args.quota:
        limits["quotas"] = key_quotas.merged_quotas({}, args)
    body = {"tenant": args.tenant, "name": args.name, "limits": limits}
    data = api.call("POST", "keys", {**body, **key_changes(args)})
    show.created(data, f"Created key {data.get('id')} for tenant {args.tenant}.")


def list_keys(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    params = {"tenant": args.tenant, "limit": args.limit, "cursor": args.cursor}
    data = api.call("GET", "keys", params={k: v for k, v in params.items() if v is not None})
    page = KeyPage.model_validate(data)
    keys, rows = list(page.data), list(data["data"])
    while args.all and page.next_cursor:
        params["cursor"] = page.next_cursor
        more = api.call("GET", "keys", params={k: v for k, v in params.items() if v is not None})
        page = KeyPage.model_validate(more)
        keys += page.data
        rows += more["data"]
    show.keys({"data": rows, "next_cursor": page.next_cursor}, keys, page.next_cursor)


def get(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    show.key(api.call("GET", f"keys/{args.id}"))


def update(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    body = key_changes(args)
    if args.name is not None:
        body["name"] = args.name
    limits: Json = given_limits(args)
    if limits or args.model_limit or args.quota:
        # The API replaces `limits` whole; keep the ones not given.
        current = api.call("GET", f"keys/{args.id}").get("limits")
        current = current if isinstance(current, dict) else {}
        if args.model_limit:
            limits["models"] = merged_model_limits(current.get("models"), args)
        if args.quota:
            limits["quotas"] = key_quotas.merged_quotas(current.get("quotas"), args)
        body["limits"] = {**current, **limits}
    if not body:
        raise UsageError("nothing to change: give at least one option")
    show.key(api.call("PATCH", f"keys/{args.id}", body), f"Updated key {args.id}.")


def revoke(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    show.key(api.call("POST", f"keys/{args.id}/revoke"), f"Revoked key {args.id}.")


def rotate(api: AdminApi, args: argparse.Namespace, show: Printer) -> None:
    grace = int(args.grace.total_seconds())
    data = api.call("POST", f"keys/{args.id}/rotate", {"grace_seconds": grace})
    old = "stops working now" if not grace else f"keeps working for {grace} s"
    show.created(data, f"Rotated key {args.id}; the old secret {old}.")


ACTIONS: dict[str, Callable[[AdminApi, argparse.Namespace, Printer], None]] = {
    "create": create,
    "list": list_keys,
    "get": get,
    "update": update,
    "revoke": revoke,
    "rotate": rotate,
}
