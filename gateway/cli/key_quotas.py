"""`--quota NAME=VALUE` of `vllm-gateway keys create/update`: a key's daily and monthly quotas.

NAME is a field of the API's `limits.quotas` (`tokens_per_day`, `cost_per_month`,
...); VALUE is a whole number, USD for costs (`2.5`), or `none` to clear it.
"""

from __future__ import annotations

import argparse

from gateway.principal import Quotas

NAMES = tuple(Quotas.__dataclass_fields__)
QuotaValue = int | float | None


def quota_pair(text: str) -> tuple[str, QuotaValue]:
    name, sep, value = text.partition("=")
    name, value = name.strip().lower(), value.strip().lower()
    if not sep or name not in NAMES:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE with NAME one of {', '.join(NAMES)}")
    if value == "none":
        return name, None
    if name.startswith("cost_"):
        try:
            usd = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}") from None
        if not 0 <= usd < float("inf"):
            raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}")
        return name, usd
    if not value.isdecimal():
        raise argparse.ArgumentTypeError(f"not a whole number (or none): {text!r}")
    return name, int(value)


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quota",
        type=quota_pair,
        action="append",
        metavar="NAME=N",
        help="a quota per UTC day or month, e.g. tokens_per_day=100000 or cost_per_month=25 "
        "(USD); repeatable; N none: no quota",
    )


def merged_quotas(current: object, args: argparse.Namespace) -> dict[str, QuotaValue]:
    """`current` quotas (as the API gives them) with the --quota ones on top."""
    merged: dict[str, QuotaValue] = {}
    if isinstance(current, dict):
        merged = {str(name): value for name, value in current.items() if value is not None}
    for name, value in args.quota or ():
        merged[name] = value
    return {name: value for name, value in merged.items() if value is not None}
