"""Usage reports from a real gateway (SQLite and Redis usage stores) in front of two
simulators: tokens as the engines counted them, exact costs, days and months, CSV
that equals the JSON and is safe in a spreadsheet, hostile queries, and the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.report_schemas import ReportParams
from gateway.admin.usage_report import report_query
from gateway.usage.records import UsageCounts, UsageKey
from gateway.usage.redis_store import connect
from gateway.usage.report import MAX_LINES, ReportQuery, ReportTooLarge, build_report
from gateway.usage.sqlite import SqliteUsageStore
from tests.servers import (
    Process,
    RedisServer,
    free_port,
    gateway_config,
    metric,
    run_gateway,
    run_simulator,
)

ADMIN_TOKEN = "admin-token-for-report-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PEPPER = "pepper-for-report-tests-0123456789abcdef"
PRICES = {"alpha": ("2.0", "3.0"), "beta": ("0.5", "1.25")}  # USD per million tokens
HOSTILE_TENANT = '=HYPERLINK("http://evil.example","x")'
HOSTILE_MODEL = "@SUM(A1:A9)"
HOSTILE_KEY = "-2+3"
# Rows written into the usage store before the gateway starts: days in two months.
PAST = {
    UsageKey("past-key", "acme", "alpha", date(2025, 1, 30)): UsageCounts(2, 100, 40, 0),
    UsageKey("past-key", "acme", "alpha", date(2025, 1, 31)): UsageCounts(3, 10, 7, 1),
    UsageKey("past-key", "acme", "beta", date(2025, 2, 1)): UsageCounts(1, 9, 3, 0),
    UsageKey(HOSTILE_KEY, HOSTILE_TENANT, HOSTILE_MODEL, date(2025, 2, 1)): UsageCounts(1, 1, 1, 0),
}
CLI_TIMEOUT_S = 60
COUNT_COLUMNS = ["requests", "prompt_tokens", "completion_tokens", "total_tokens"]
COUNT_COLUMNS += ["estimated_requests", "cost_usd"]


@dataclass
class Stack:
    gateway: Process
    sims: dict[str, Process]
    keys: dict[str, str]  # key id -> tenant
    sent: int


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def exact_cost(model: str, prompt: int, completion: int) -> int:
    """Micro-dollars of one stored row: USD per million tokens is micro-dollars per token."""
    if model not in PRICES:
        return 0
    prompt_price, completion_price = (Decimal(p) for p in PRICES[model])
    return math.ceil(prompt_price * prompt + completion_price * completion)


def report(gateway: Process, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/admin/v1/usage/report", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def new_key(gateway: Process, tenant: str, **quotas: int) -> tuple[str, str]:
    body = {"tenant": tenant, "name": "report", "limits": {"quotas": quotas}}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def send_traffic(gateway: Process, keys: list[str]) -> int:
    """Two keys, two models, plain and streamed answers; the number of requests sent."""
    plan = [(keys[0], "alpha", 7), (keys[0], "alpha", 3), (keys[0], "beta", 5)]
    plan += [(keys[1], "alpha", 4), (keys[1], "beta", 6), (keys[1], "beta", 2)]
    for number, (key, model, max_tokens) in enumerate(plan):
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"Report request {number} " * number}],
            "max_tokens": max_tokens,
            "stream": number % 2 == 1,
        }
        headers = {"Authorization": f"Bearer {key}"}
        url = f"{gateway.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            response.read()
            assert response.status_code == 200, response.text
    return len(plan)


def wait_for_usage(gateway: Process, requests: int) -> None:
    """The recorder writes once a second: wait until every request of today is stored."""
    deadline = time.monotonic() + 15
    while report(gateway, since=today(), until=today())["total"]["requests"] < requests:
        assert time.monotonic() < deadline, "the usage was not recorded"
        time.sleep(0.2)


def stack_config(sims: dict[str, Process], auth: dict[str, object]) -> dict[str, object]:
    config = gateway_config(free_port(), {name: [sim.url] for name, sim in sims.items()})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["auth"] = {"pepper": PEPPER, **auth}
    config["pricing"] = {
        model: {"prompt": float(p), "completion": float(c)} for model, (p, c) in PRICES.items()
    }
    config["limits"] = {"tenants": {"acme": {"quotas": {"requests_per_month": 1000}}}}
    return config


@contextmanager
def running_stack(tmp: Path, auth: dict[str, object]) -> Iterator[Stack]:
    """Two simulators (alpha, beta) of their own, so their counters hold only this
    stack's tokens; a gateway; a key of acme with a daily token quota, one of globex."""
    with (
        run_simulator(tmp, model="alpha") as alpha,
        run_simulator(tmp, model="beta") as beta,
    ):
        sims = {"alpha": alpha, "beta": beta}
        with run_gateway(tmp, stack_config(sims, auth)) as gateway:
            first, first_id = new_key(gateway, "acme", tokens_per_day=100_000)
            second, second_id = new_key(gateway, "globex")
            sent = send_traffic(gateway, [first, second])
            wait_for_usage(gateway, sent)
            yield Stack(gateway, sims, {first_id: "acme", second_id: "globex"}, sent)


@pytest.fixture(scope="module")
def stack(module_tmp: Path) -> Iterator[Stack]:
    """A gateway on SQLite whose usage table already holds PAST."""
    path = module_tmp / "gateway.db"

    async def seed() -> None:
        store = await SqliteUsageStore.open(path)
        try:
            await store.add(PAST)
        finally:
            await store.close()

    asyncio.run(seed())
    with running_stack(module_tmp, {"key_store": {"sqlite_path": str(path)}}) as running:
        yield running


def check_against_engines(stack: Stack) -> None:
    """Today's tokens per model are the simulators' own counters; each line's cost is
    its tokens times the price, exactly; the total is the sum of the lines."""
    body = report(stack.gateway, group_by="key,tenant,model", since=today(), until=today())
    assert body["object"] == "report" and body["group_by"] == ["key", "tenant", "model"]
    lines = body["data"]
    assert {(line["key_id"], line["tenant"]) for line in lines} == set(stack.keys.items())
    for model, sim in stack.sims.items():
        mine = [line for line in lines if line["model"] == model]
        assert sum(line["prompt_tokens"] for line in mine) == metric(
            sim.url, "vllm:prompt_tokens_total"
        )
        assert sum(line["completion_tokens"] for line in mine) == metric(
            sim.url, "vllm:generation_tokens_total"
        )
    for line in lines:
        cost = exact_cost(line["model"], line["prompt_tokens"], line["completion_tokens"])
        assert line["cost_micro_usd"] == cost
        assert Decimal(line["cost_usd"]) == Decimal(cost) / 1_000_000
        assert line["total_tokens"] == line["prompt_tokens"] + line["completion_tokens"]
        assert line["period"] == today()
    total = body["total"]
    assert total["requests"] == stack.sent == sum(line["requests"] for line in lines)
    assert total["cost_micro_usd"] == sum(line["cost_micro_usd"] for line in lines) > 0
    # Grouped otherwise, the same rows cost the same in total.
    for group_by in ("tenant,model", "model", "key", ""):
        other = report(stack.gateway, group_by=group_by, since=today(), until=today())
        assert other["total"] == total, group_by


def test_tokens_are_the_engines_and_costs_are_exact(stack: Stack) -> None:
    check_against_engines(stack)


def test_default_groups_by_tenant_and_model_over_the_last_30_days(stack: Stack) -> None:
    body = report(stack.gateway)
    assert body["group_by"] == ["tenant", "model"] and body["period"] == "day"
    assert body["until"] == today()
    assert (date.fromisoformat(body["until"]) - date.fromisoformat(body["since"])).days == 29
    assert all("key_id" not in line for line in body["data"])
    assert {(line["tenant"], line["model"]) for line in body["data"]} == {
        (tenant, model) for tenant in ("acme", "globex") for model in ("alpha", "beta")
    }


def test_days_and_months_sum_the_same_rows(stack: Stack) -> None:
    window = {"since": "2025-01-30", "until": "2025-02-01", "key": "past-key"}
    days = report(stack.gateway, group_by="model", **window)["data"]
    assert [(d["period"], d["model"], d["requests"], d["estimated_requests"]) for d in days] == [
        ("2025-01-30", "alpha", 2, 0),
        ("2025-01-31", "alpha", 3, 1),
        ("2025-02-01", "beta", 1, 0),
    ]
    months = report(stack.gateway, group_by="model", period="month", **window)["data"]
    assert [(m["period"], m["model"], m["requests"], m["prompt_tokens"]) for m in months] == [
        ("2025-01", "alpha", 5, 110),
        ("2025-02", "beta", 1, 9),
    ]
    january = months[0]
    # Each stored day is priced on its own (rounded up), then summed.
    assert january["cost_micro_usd"] == exact_cost("alpha", 100, 40) + exact_cost("alpha", 10, 7)
    # The range is inclusive and cuts a month: only its days in range count.
    cut = report(stack.gateway, period="month", since="2025-01-31", until="2025-01-31")
    assert cut["total"]["requests"] == 3


def test_filters_narrow_the_rows(stack: Stack) -> None:
    month = {"period": "month", "since": "2025-01-01", "until": today()}
    globex = report(stack.gateway, tenant="globex", **month)
    assert {line["tenant"] for line in globex["data"]} == {"globex"}
    (key_id,) = [k for k, tenant in stack.keys.items() if tenant == "globex"]
    by_key = report(stack.gateway, key=key_id, **month)
    assert by_key["total"] == globex["total"]
    beta = report(stack.gateway, model="beta", group_by="model", **month)
    assert {line["model"] for line in beta["data"]} == {"beta"}
    nothing = report(stack.gateway, model="no-such-model", **month)
    assert nothing["data"] == [] and nothing["total"]["requests"] == 0


def csv_report(gateway: Process, params: dict[str, str], headers: dict[str, str]) -> str:
    url = f"{gateway.url}/admin/v1/usage/report"
    response = httpx.get(url, params=params, headers={**ADMIN, **headers})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    return response.text


@pytest.mark.parametrize(
    ("extra", "headers"),
    [({"format": "csv"}, {}), ({}, {"Accept": "text/csv"})],
    ids=["format", "accept"],
)
def test_csv_is_the_json_line_for_line(
    stack: Stack, extra: dict[str, str], headers: dict[str, str]
) -> None:
    params = {"group_by": "model,key,tenant", "period": "month", "since": "2025-01-01"}
    text = csv_report(stack.gateway, {**params, **extra}, headers)
    assert text.endswith("\r\n")  # RFC 4180
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    lines = report(stack.gateway, **params)["data"]
    assert len(rows) == len(lines) > 2
    for row, line in zip(rows, lines, strict=True):
        assert list(row) == ["period", "model", "key_id", "tenant", *COUNT_COLUMNS]
        for name, value in row.items():
            expected = line[name]
            if name in ("model", "key_id", "tenant") and expected[0] in "=+-@":
                expected = f"'{expected}"
            assert value == str(expected), name


def test_csv_never_starts_a_cell_with_a_formula(stack: Stack) -> None:
    params = {"group_by": "key,tenant,model", "since": "2025-02-01", "until": "2025-02-01"}
    text = csv_report(stack.gateway, {**params, "format": "csv"}, {})
    cells = [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]
    assert f"'{HOSTILE_TENANT}" in cells and f"'{HOSTILE_MODEL}" in cells
    assert f"'{HOSTILE_KEY}" in cells
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    # The quoted form a spreadsheet reads: text, quotes doubled.
    assert '"\'=HYPERLINK(""http://evil.example"",""x"")"' in text
    # JSON carries the names unchanged.
    tenants = {line["tenant"] for line in report(stack.gateway, **params)["data"]}
    assert HOSTILE_TENANT in tenants


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "2025-13-01"}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"since": "2025-02-02", "until": "2025-02-01"}, "since"),
        ({"since": "2024-01-01", "until": "2025-06-01"}, "since"),
        ({"since": "0001-01-01", "period": "month"}, "since"),
        ({"group_by": "tenant,secret"}, "group_by"),
        ({"group_by": "x" * 65}, "group_by"),
        ({"period": "week"}, "period"),
        ({"format": "xml"}, "format"),
        ({"tenant": "a\nb"}, "tenant"),
    ],
)
def test_hostile_queries_are_422_in_openai_shape(
    stack: Stack, params: dict[str, str], param: str
) -> None:
    url = f"{stack.gateway.url}/admin/v1/usage/report"
    response = httpx.get(url, params=params, headers=ADMIN)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"


@pytest.mark.parametrize("token", [None, "not-the-admin-token", "client-key"])
def test_a_report_needs_an_admin_credential(stack: Stack, token: str | None) -> None:
    if token == "client-key":
        token, _ = new_key(stack.gateway, "acme")  # a working client key is no admin
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    for fmt in ("json", "csv"):
        url = f"{stack.gateway.url}/admin/v1/usage/report?format={fmt}"
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_admin_credentials"
        assert "acme" not in response.text


def test_quotas_of_the_keys_and_tenants_reported(stack: Stack) -> None:
    deadline = time.monotonic() + 10
    while True:  # settled when each answer ended: wait for the last to settle
        body = report(stack.gateway, group_by="key,tenant", since=today(), until=today())
        quotas = {(q["scope"], q["key_id"] or q["tenant"]): q["quotas"] for q in body["quotas"]}
        reserved = sum(item["reserved"] for items in quotas.values() for item in items)
        if reserved == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    (acme_key,) = [k for k, tenant in stack.keys.items() if tenant == "acme"]
    assert set(quotas) == {("key", acme_key), ("tenant", "acme")}  # globex has none
    line = next(line for line in body["data"] if line["key_id"] == acme_key)
    (tokens,) = quotas[("key", acme_key)]
    assert (tokens["kind"], tokens["period"], tokens["period_name"]) == ("tokens", "day", today())
    assert tokens["used"] == line["total_tokens"]
    assert tokens["remaining"] == 100_000 - line["total_tokens"]
    (requests,) = quotas[("tenant", "acme")]
    assert requests["kind"] == "requests" and requests["period"] == "month"
    assert requests["used"] == line["requests"] and requests["remaining"] == 1000 - line["requests"]
    # Grouped by model only, no quota applies to a line.
    assert report(stack.gateway, group_by="model")["quotas"] == []


def vllm_gateway(*args: str) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "usage", "report", *args],
        capture_output=True,
        env={**base, "VLLM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert ADMIN_TOKEN.encode() not in result.stdout + result.stderr
    return result


def without_clock(body: dict[str, Any]) -> dict[str, Any]:
    """BODY without the seconds to each quota's reset, which run down between reads."""
    for owner in body["quotas"]:
        for quota in owner["quotas"]:
            quota.pop("reset_s")
    return body


def test_cli_prints_the_report(stack: Stack) -> None:
    url = stack.gateway.url
    window = ["--since", today(), "--until", today(), "--group-by", "key,tenant,model"]
    table = vllm_gateway("--url", url, *window)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    lines = text.splitlines()
    assert lines[0].split() == ["PERIOD", "KEY", "TENANT", "MODEL", "REQUESTS", "PROMPT",
                                "COMPLETION", "TOTAL", "ESTIMATED", "COST", "USD"]  # fmt: skip
    body = report(stack.gateway, group_by="key,tenant,model", since=today(), until=today())
    total = body["total"]
    assert lines[len(body["data"]) + 1].split() == [
        "TOTAL", *(str(total[name]) for name in ("requests", "prompt_tokens", "completion_tokens",
                                                 "total_tokens", "estimated_requests")),
        total["cost_usd"],
    ]  # fmt: skip
    assert all(key_id in text for key_id in stack.keys)
    assert "requests" in text and "tokens" in text  # the quotas' table
    as_json = vllm_gateway("--url", url, "--json", *window)
    assert without_clock(json.loads(as_json.stdout)) == without_clock(body)
    as_csv = vllm_gateway("--url", url, "--csv", *window)
    params = {"group_by": "key,tenant,model", "since": today(), "until": today()}
    assert as_csv.stdout.decode() == csv_report(stack.gateway, {**params, "format": "csv"}, {})


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--since", "2025-02-30"], 1, "422 query.since"),
        (["--group-by", "cost"], 1, "unknown group 'cost'"),
        (["--csv", "--json"], 2, "--csv and --json exclude each other"),
    ],
)
def test_cli_refusals(stack: Stack, args: list[str], code: int, message: str) -> None:
    result = vllm_gateway("--url", stack.gateway.url, *args)
    assert result.returncode == code
    assert message in result.stderr.decode()


def test_redis_usage_store(tmp_path: Path, redis_server: RedisServer) -> None:
    """The same report from usage in Redis, shared by replicas: past months written
    straight into Redis, today's by the gateway."""

    async def seed() -> None:
        store = connect(redis_server.url)
        try:
            await store.add(PAST)
        finally:
            await store.close()

    asyncio.run(seed())
    auth = {"key_store": {"backend": "redis", "redis_url": redis_server.url}}
    with running_stack(tmp_path, auth) as stack:
        check_against_engines(stack)
        months = report(
            stack.gateway, group_by="key,model", period="month", since="2025-01-01", key="past-key"
        )
        assert [(m["period"], m["model"], m["requests"]) for m in months["data"]] == [
            ("2025-01", "alpha", 5),
            ("2025-02", "beta", 1),
        ]
        day = {"since": "2025-02-01", "until": "2025-02-01", "group_by": "tenant"}
        text = csv_report(stack.gateway, {**day, "format": "csv"}, {})
        tenants = [row[1] for row in csv.reader(io.StringIO(text, newline=""))]
        assert tenants == ["tenant", f"'{HOSTILE_TENANT}", "acme"]


def test_a_report_of_too_many_lines_is_refused_before_it_is_built() -> None:
    rows = [
        (UsageKey(f"key-{n}", "acme", "alpha", date(2025, 1, 1)), UsageCounts(1, 1, 1, 0))
        for n in range(MAX_LINES + 1)
    ]
    day = date(2025, 1, 1)
    by_tenant = build_report(rows, ReportQuery(("tenant",), "day", day, day), {})
    assert by_tenant.total.counts.requests == MAX_LINES + 1 and len(by_tenant.lines) == 1
    with pytest.raises(ReportTooLarge, match="more than 50000 lines"):
        build_report(rows, ReportQuery(("key",), "day", day, day), {})


@pytest.mark.parametrize("period", ["day", "month"])
def test_default_ranges_stop_at_the_first_day_there_is(period: str) -> None:
    for until in (date.min, date(1, 1, 29), date(1, 12, 31), date(2, 1, 1)):
        query = report_query(ReportParams(period=period, until=until), until)
        assert date.min <= query.since <= until
    assert report_query(ReportParams(period="month"), date(2026, 3, 9)).since == date(2025, 4, 1)
    assert report_query(ReportParams(), date(2026, 3, 9)).since == date(2026, 2, 8)
