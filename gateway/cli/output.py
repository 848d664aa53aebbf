"""What the operator commands print: every line through `Output`, which redacts the
command's secret; for `vllm-gateway keys`, tables and details for people, the API's
JSON with --json.

The plaintext key of a create or a rotate is printed once, last, followed by the
warning; with --json the warning goes to stderr so that stdout stays JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.admin.schemas import KeyCreated, KeyLimits, KeyOut, ModelRates

STORE_IT_NOW = "Store this key now; it will not be shown again."
COLUMNS = ("ID", "TENANT", "NAME", "STATUS", "MODELS", "CREATED", "LAST USED", "EXPIRES")
MAX_CELL = 40


@dataclass
class Output:
    """Where results go; `secret` never reaches the stream, even if a server echoes it."""

    stream: TextIO
    secret: str | None

    def write(self, text: str) -> None:
        if self.secret:
            text = text.replace(self.secret, "[redacted]")
        self.stream.write(text)
        self.stream.flush()

    def line(self, text: str) -> None:
        self.write(f"{text}\n")


@dataclass
class Printer:
    """Where results go: `out` for results, `err` for notes; both redact the admin token."""

    out: Output
    err: Output
    as_json: bool

    def key(self, data: dict[str, Any], headline: str | None = None) -> None:
        if self.as_json:
            self.json(data)
            return
        if headline:
            self.out.line(headline)
        for line in key_details(KeyOut.model_validate(data)):
            self.out.line(line)

    def created(self, data: dict[str, Any], headline: str) -> None:
        created = KeyCreated.model_validate(data)
        if self.as_json:
            self.json(data)
            self.err.line(STORE_IT_NOW)
            return
        self.key(data, headline)
        self.out.line("")
        self.out.line(f"key: {created.key}")
        self.out.line(STORE_IT_NOW)

    def keys(self, data: dict[str, Any], keys: Sequence[KeyOut], next_cursor: str | None) -> None:
        if self.as_json:
            self.json(data)
            return
        for line in key_table(keys):
            self.out.line(line)
        if next_cursor:
            self.err.line(f"more keys: pass --cursor {next_cursor}, or --all")

    def json(self, data: object) -> None:
        self.out.line(json.dumps(data, indent=2, ensure_ascii=False))


def key_table(keys: Sequence[KeyOut]) -> list[str]:
    """Aligned columns, one key a row; an empty list still gets its header."""
    rows = [COLUMNS, *(_row(key) for key in keys)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _row(key: KeyOut) -> tuple[str, ...]:
    return (
        key.id,
        _cell(key.tenant),
        _cell(key.name) or "-",
        key.status,
        _cell(models_text(key.models)),
        when(key.created_at),
        when(key.last_used_at, "never"),
        when(key.expires_at, "never"),
    )


def key_details(key: KeyOut) -> list[str]:
    fields: list[tuple[str, str]] = [
        ("id", key.id),
        ("tenant", key.tenant),
        ("name", key.name or "-"),
        ("status", key.status),
        ("models", models_text(key.models)),
        ("limits", limits_text(key.limits)),
        *model_limits_rows(key.limits),
        *quota_rows(key.limits),
        ("created", when(key.created_at)),
        ("last used", when(key.last_used_at, "never")),
        ("expires", when(key.expires_at, "never")),
    ]
    if key.revoked_at is not None:
        fields.append(("revoked", when(key.revoked_at)))
    if key.previous_secret_valid_until is not None:
        fields.append(("old key valid until", when(key.previous_secret_valid_until)))
    metadata = ", ".join(f"{k}={v}" for k, v in sorted(key.metadata.items()))
    fields.append(("metadata", metadata or "-"))
    width = max(len(label) for label, _ in fields) + 1
    return [f"{(label + ':' if label else '').ljust(width)} {value}" for label, value in fields]


def models_text(models: Sequence[str] | None) -> str:
    if models is None:
        return "all"
    return ",".join(models) if models else "none"


def limits_text(limits: KeyLimits | ModelRates) -> str:
    parts = [
        ("rpm", limits.requests_per_minute),
        ("tpm", limits.tokens_per_minute),
        ("concurrency", limits.concurrent_requests),
    ]
    if isinstance(limits, KeyLimits):
        parts.append(("max tokens", limits.max_tokens))
        parts.append(("max batch", limits.max_batch))
    text = ", ".join(f"{label} {value}" for label, value in parts if value is not None)
    return text or "none"


def model_limits_rows(limits: KeyLimits) -> list[tuple[str, str]]:
    """One row per model with limits of its own, the first labelled; none without any."""
    rows = [(model, limits_text(rates)) for model, rates in sorted(limits.models.items())]
    return [
        ("model limits" if index == 0 else "", f"{model}: {text}")
        for index, (model, text) in enumerate(rows)
    ]


def quota_rows(limits: KeyLimits) -> list[tuple[str, str]]:
    """One `quotas` row listing those set (costs in USD); none without any."""
    given = limits.quotas.model_dump(exclude_none=True)
    parts = [
        f"{name} {value} USD" if name.startswith("cost_") else f"{name} {value}"
        for name, value in given.items()
    ]
    return [("quotas", ", ".join(parts))] if parts else []


def when(moment: datetime | None, missing: str = "-") -> str:
    if moment is None:
        return missing
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cell(text: str) -> str:
    # Keep rows on one line and the table narrow; --json and `get` show it whole.
    text = text.replace("\t", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."
