"""Quota settings, prices and the arithmetic of cost: exact micro-dollars, never floats."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from gateway.limits.quota_setup import prices, tenant_quotas
from gateway.limits.quotas import Price, amounts, usd_to_micro
from gateway.principal import Quotas
from gateway.settings import Settings, SettingsError, load_settings


def settings(**fields: object) -> Settings:
    return Settings.model_validate(fields)


def test_tenant_quotas_and_prices_come_from_the_settings() -> None:
    given = settings(
        limits={"tenants": {"acme": {"quotas": {"tokens_per_day": 1000, "cost_per_month": 0.1}},
                            "plain": {"requests_per_minute": 5}}},
        pricing={"m": {"prompt": 0.1, "completion": 0.3}},
    )  # fmt: skip
    assert tenant_quotas(given) == {"acme": Quotas(tokens_per_day=1000, cost_per_month=100_000)}
    assert prices(given) == {"m": Price(Decimal("0.1"), Decimal("0.3"))}
    assert given.limits.quota_soft_threshold == 0.8


def test_cost_is_exact_and_rounded_up_per_request() -> None:
    table = {"m": Price(Decimal("0.1"), Decimal("0.3"))}
    # 3 x 0.1 in floats is 0.30000000000000004, which would round up to 1 too many.
    assert amounts(table, "m", 3, 0).cost == 1
    assert amounts(table, "m", 10, 10).cost == 4
    assert amounts(table, "m", 1_000_000, 1_000_000).cost == 400_000
    assert amounts(table, "unpriced", 10**6, 10**6).cost == 0
    assert usd_to_micro(0.1) == 100_000 and usd_to_micro(1e9) == 10**15


@pytest.mark.parametrize(
    "fields",
    [
        {"limits": {"tenants": {"t": {"quotas": {"tokens_per_day": -1}}}}},
        {"limits": {"tenants": {"t": {"quotas": {"tokens_per_week": 1}}}}},
        {"limits": {"tenants": {"t": {"quotas": {"cost_per_day": float("nan")}}}}},
        {"limits": {"quota_soft_threshold": 0}},
        {"limits": {"quota_soft_threshold": 1.5}},
        {"pricing": {"m": {"prompt": -1, "completion": 1}}},
        {"pricing": {"m": {"prompt": 1}}},
    ],
)
def test_wrong_quota_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        settings(**fields)


def test_a_file_with_a_wrong_quota_fails_to_load(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("limits:\n  tenants:\n    t:\n      quotas: {requests_per_day: lots}\n")
    with pytest.raises(SettingsError, match="requests_per_day"):
        load_settings(path, {})
