"""`vllm-gateway keys export FILE` and `keys import FILE`: a store's state to a file and back.

Unlike the other `keys` commands these work on the store itself, opened from the
gateway's settings (`--config`, then `VGW_*` variables), not through the admin
API: a migration (SQLite to Redis, or back) runs while the gateways are stopped,
or before the new ones start. Exit 0 when done, 1 when refused or failed, 2 for
settings that do not load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import SecretStr

from gateway import __version__
from gateway.admin.audit import AuditLogError
from gateway.keys.store import KeyStoreError
from gateway.private_files import write_private
from gateway.settings import KeyStoreSettings, SettingsError, load_settings
from gateway.transfer.copy import check_pepper, export_store, import_store
from gateway.transfer.jsonl import (
    Header,
    StoreDump,
    TransferError,
    dump_lines,
    read_body,
    read_header,
)
from gateway.transfer.stores import open_stores
from gateway.usage.store import UsageStoreError

EXPORT_HELP = "write every key record, usage total and audit entry of the store to FILE"
IMPORT_HELP = "fill an empty store with the records of an export FILE"
EPILOG = (
    "Works on the store of the settings (--config, VGW_* variables), not through a gateway:"
    " run it while the gateways are stopped. The file holds key hashes and tenants' usage"
    " (no secret); it is written 0600. Import refuses a file exported under another pepper,"
    " of an unknown format version, or a store that is not empty."
)
_FAILURES = (
    TransferError, KeyStoreError, UsageStoreError, AuditLogError, OSError, UnicodeDecodeError
)  # fmt: skip


def add_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`export` and `import`, beside the admin API's actions of `vllm-gateway keys`."""
    for name, text, file_help in (
        ("export", EXPORT_HELP, "the file to write; refused if it exists"),
        ("import", IMPORT_HELP, "a file written by `keys export`"),
    ):
        parser = actions.add_parser(name, help=text, description=text, epilog=EPILOG)
        parser.add_argument("file", type=Path, metavar="FILE", help=file_help)
        parser.add_argument(
            "--config", type=Path, help="the gateway's YAML settings file (its store and pepper)"
        )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"vllm-gateway keys {args.action}: {exc}", file=sys.stderr)
        return 2
    pepper = settings.auth.pepper
    if pepper is None:
        print(
            f"vllm-gateway keys {args.action}: auth.pepper is not set; it names the keys'"
            " hashes (under `make run` it is data/pepper: VGW_AUTH__PEPPER=$(cat data/pepper))",
            file=sys.stderr,
        )
        return 2
    try:
        message = _transfer(args.action, args.file, settings.auth.key_store, pepper)
    except _FAILURES as exc:
        print(f"vllm-gateway keys {args.action}: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def _transfer(action: str, path: Path, store: KeyStoreSettings, pepper: SecretStr) -> str:
    if action == "export":
        if path.exists():
            raise TransferError(f"{path} exists: give a new file name")
        header, dump, where = asyncio.run(_export(store, pepper.get_secret_value().encode()))
        write_private(path, "".join(dump_lines(header, dump)))
        counts = dump.counts()
        return (
            f"Exported {counts['keys']} keys, {counts['usage']} usage rows and"
            f" {counts['audit']} audit entries from {where} to {path}"
            f" (pepper {header.pepper_fingerprint})."
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise TransferError(f"{path} is empty")
    header = read_header(lines[0])
    check_pepper(header, pepper.get_secret_value().encode())  # before the store is touched
    dump = read_body(lines[1:])
    where = asyncio.run(_import(store, header, dump))
    counts = dump.counts()
    return (
        f"Imported {counts['keys']} keys, {counts['usage']} usage rows and {counts['audit']}"
        f" audit entries into {where}."
    )


async def _export(store: KeyStoreSettings, pepper: bytes) -> tuple[Header, StoreDump, str]:
    async with open_stores(store, must_exist=True) as stores:
        header, dump = await export_store(stores, pepper, source=store.backend, version=__version__)
    return header, dump, stores.description


async def _import(store: KeyStoreSettings, header: Header, dump: StoreDump) -> str:
    async with open_stores(store, must_exist=False) as stores:
        await import_store(stores, header, dump)
    return stores.description
