"""Guessing admin tokens online: wrong credentials counted per client address
(gateway.admin.guard), first as a unit, then through a real gateway where the
address is the TCP peer's (127.0.0.1 and 127.0.0.2 are two addresses on loopback)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.guard import SignInGuard, client_address
from tests.servers import Process, free_port, gateway_config, metric, run_gateway

ADMIN_TOKEN = "admin-token-for-guard-tests-0123456789"
PEPPER = "pepper-for-the-guard-tests-0123456789abcdef"
SCRAPE_TOKEN = "scrape-token-for-guard-tests-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 5.0

    def __call__(self) -> float:
        return self.now


def scope(host: str | None, port: int = 5000) -> dict[str, Any]:
    return {"type": "http", "client": None if host is None else (host, port)}


def test_an_address_is_refused_from_its_limit_to_the_end_of_its_window() -> None:
    clock = Clock()
    guard = SignInGuard(3, 60, clock=clock)
    guest = scope("203.0.113.7")
    for _ in range(2):
        guard.failed(guest)
        assert guard.retry_after(guest) is None
    clock.now += 10
    guard.failed(guest)  # the third within the window that began at 1000
    assert guard.retry_after(guest) == 50
    clock.now += 49.5
    assert guard.retry_after(guest) == 1
    assert guard.retry_after(scope("203.0.113.8")) is None  # another address
    clock.now += 0.5
    assert guard.retry_after(guest) is None
    assert len(guard) == 0  # an ended window is forgotten when read


def test_failures_in_an_ended_window_start_a_new_count() -> None:
    clock = Clock()
    guard = SignInGuard(2, 60, clock=clock)
    guest = scope("198.51.100.1")
    guard.failed(guest)
    clock.now += 60  # the window has ended: this failure is the first of a new one
    guard.failed(guest)
    assert guard.retry_after(guest) is None
    clock.now += 59
    guard.failed(guest)
    assert guard.retry_after(guest) == 1


def test_a_failure_long_after_the_window_starts_a_new_one() -> None:
    clock = Clock()
    guard = SignInGuard(2, 60, clock=clock)
    guest = scope("198.51.100.2")
    guard.failed(guest)
    clock.now += 70  # well past the window: a new one starts here
    guard.failed(guest)
    clock.now += 1
    guard.failed(guest)
    assert guard.retry_after(guest) == 59


def test_reaching_the_limit_is_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = SignInGuard(3, 60, clock=clock)
    guest = scope("203.0.113.9")
    with caplog.at_level(logging.WARNING, logger="gateway.admin"):
        for step in (0, 4, 6, 1, 1):
            clock.now += step
            guard.failed(guest)
    assert [r.getMessage() for r in caplog.records] == [
        "admin credentials from 203.0.113.9 refused for 50 s: 3 wrong ones within 10 s"
    ]


@pytest.mark.parametrize("limit", [2, 10, 300])
def test_the_warning_comes_at_the_limit_for_any_limit(
    caplog: pytest.LogCaptureFixture, limit: int
) -> None:
    guard = SignInGuard(limit, 60, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="gateway.admin"):
        for failures in range(1, limit + 3):
            guard.failed(scope("203.0.113.10"))
            assert len(caplog.records) == (failures >= limit), failures


def test_by_default_the_table_holds_ten_thousand_addresses() -> None:
    guard = SignInGuard(1, 60, clock=Clock())
    for n in range(10_001):
        guard.failed(scope(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"))
    assert len(guard) == 10_000
    assert guard.retry_after(scope("10.0.0.0")) is None  # the first, forgotten
    assert guard.retry_after(scope("10.0.0.1")) == 60


def test_a_table_of_one_address_keeps_the_last() -> None:
    guard = SignInGuard(1, 60, max_addresses=1, clock=Clock())
    first, second = scope("192.0.2.1"), scope("192.0.2.2")
    guard.failed(first)
    guard.failed(second)
    assert len(guard) == 1
    assert guard.retry_after(first) is None and guard.retry_after(second) == 60


def test_the_table_forgets_the_least_recently_failing_address_first() -> None:
    clock = Clock()
    guard = SignInGuard(2, 60, max_addresses=4, clock=clock)
    old, kept, *others = [scope(f"192.0.2.{i}") for i in range(5)]
    for guest in (old, kept, old, kept):
        guard.failed(guest)
    assert guard.retry_after(old) == 60 and guard.retry_after(kept) == 60
    guard.failed(old)  # old fails again: kept is now the least recent
    for guest in others:
        guard.failed(guest)
    assert len(guard) == 4
    assert guard.retry_after(kept) is None
    assert guard.retry_after(old) == 60


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "local"),
        ("testclient", "testclient"),
    ],
)
def test_failures_count_against_an_ipv4_address_or_an_ipv6_slash_64(
    host: str | None, address: str
) -> None:
    assert client_address(scope(host)) == address


def test_a_guard_needs_a_positive_limit_and_window() -> None:
    for limit, window, size in ((0, 60, 10), (1, 0, 10), (1, -5, 10), (1, 60, 0)):
        with pytest.raises(ValueError, match="positive"):
            SignInGuard(limit, window, max_addresses=size)
    clock = Clock()
    smallest = SignInGuard(1, 0.5, max_addresses=1, clock=clock)
    smallest.failed(scope("192.0.2.9"))
    assert smallest.retry_after(scope("192.0.2.9")) == 1


@pytest.fixture
def guarded(tmp_path: Path, sim: Process) -> Any:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {"pepper": PEPPER, "key_store": {"sqlite_path": str(tmp_path / "k.db")}}
    config["admin"] = {"tokens": [ADMIN_TOKEN], "failed_sign_ins": {"limit": 3, "window": 3}}
    config["metrics"] = {"token": SCRAPE_TOKEN}
    with run_gateway(tmp_path, config) as gateway:
        yield gateway


def client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)


def keys(http: httpx.Client, gateway: Process, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return http.get(f"{gateway.url}/admin/v1/keys", headers=headers)


def refusals(gateway: Process) -> dict[str, float]:
    return {
        reason: metric(gateway.url, "gateway_auth_failures_total", reason=reason)
        for reason in ("admin_credentials", "admin_throttled")
    }


def test_a_guessing_address_is_refused_even_the_right_token(guarded: Process) -> None:
    gateway = guarded
    with client("127.0.0.1") as guesser, client("127.0.0.2") as admin:
        created = admin.post(
            f"{gateway.url}/admin/v1/keys",
            json={"tenant": "acme", "name": "kept"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status_code == 201
        # Right credentials, and none at all, are never counted.
        for _ in range(5):
            assert keys(guesser, gateway, ADMIN_TOKEN).status_code == 200
            assert keys(guesser, gateway, None).status_code == 401
        for guess in ("wrong-1", "wrong-2", ADMIN_TOKEN[:-1]):
            refused = keys(guesser, gateway, guess)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_admin_credentials"
        throttled = keys(guesser, gateway, ADMIN_TOKEN)
        assert throttled.status_code == 429
        error = throttled.json()["error"]
        assert error["code"] == "admin_sign_in_throttled"
        assert set(error) == {"message", "type", "param", "code"}
        assert 1 <= int(throttled.headers["retry-after"]) <= 3
        assert ADMIN_TOKEN not in throttled.text
        # The UI's sign-in is the same door: refused before the token is read.
        ui = guesser.post(f"{gateway.url}/admin/ui/session", json={"token": ADMIN_TOKEN})
        assert ui.status_code == 429 and "retry-after" in ui.headers
        assert "set-cookie" not in ui.headers
        # A request with no credential learns nothing new: the same 401 as before.
        assert keys(guesser, gateway, None).status_code == 401
        # Another address is not held up, and nothing stored was touched.
        listed = keys(admin, gateway, ADMIN_TOKEN)
        assert listed.status_code == 200
        assert [key["name"] for key in listed.json()["data"]] == ["kept"]
        # The window ends: the right token works again from the guessing address.
        time.sleep(int(throttled.headers["retry-after"]) + 0.2)
        assert keys(guesser, gateway, ADMIN_TOKEN).status_code == 200
    # Three wrong credentials; two requests held back (the API's and the UI's).
    assert refusals(gateway) == {"admin_credentials": 3, "admin_throttled": 2}
    log = gateway.log()
    assert "admin credentials from 127.0.0.1 refused for" in log
    assert "wrong-1" not in log and ADMIN_TOKEN not in log


def test_wrong_sign_ins_on_the_web_ui_count_too(guarded: Process) -> None:
    gateway = guarded
    with client("127.0.0.3") as guesser, client("127.0.0.4") as other:
        url = f"{gateway.url}/admin/ui/session"
        for guess in ("a", "b", "c"):
            assert guesser.post(url, json={"token": guess}).status_code == 401
        # The limit is hit: the right token is refused there, on the UI and the API.
        assert guesser.post(url, json={"token": ADMIN_TOKEN}).status_code == 429
        assert keys(guesser, gateway, ADMIN_TOKEN).status_code == 429
        # Malformed sign-ins carry no guess and are not counted.
        for _ in range(5):
            assert other.post(url, content=b"not json").status_code == 400
        signed_in = other.post(url, json={"token": ADMIN_TOKEN})
        assert signed_in.status_code == 201 and "set-cookie" in signed_in.headers


def test_the_scrape_token_on_its_route_is_not_a_wrong_credential(guarded: Process) -> None:
    gateway = guarded
    with client("127.0.0.5") as prometheus:
        targets = f"{gateway.url}/admin/v1/prometheus/targets"
        headers = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
        for _ in range(6):
            assert prometheus.get(targets, headers=headers).status_code == 200
        # Elsewhere it opens nothing, and counts as the wrong credential it is there.
        for _ in range(3):
            assert (
                prometheus.get(f"{gateway.url}/admin/v1/keys", headers=headers).status_code == 401
            )
        assert prometheus.get(targets, headers=headers).status_code == 429


def test_the_guard_can_be_turned_off(tmp_path: Path, sim: Process) -> None:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {"pepper": PEPPER, "key_store": {"sqlite_path": str(tmp_path / "k.db")}}
    config["admin"] = {"tokens": [ADMIN_TOKEN], "failed_sign_ins": {"limit": None}}
    with run_gateway(tmp_path, config) as gateway, client("127.0.0.6") as guesser:
        for n in range(15):
            assert keys(guesser, gateway, f"wrong-{n}").status_code == 401
        assert keys(guesser, gateway, ADMIN_TOKEN).status_code == 200
        # Still counted, for the dashboards and alerts, with nobody held back.
        assert refusals(gateway) == {"admin_credentials": 15, "admin_throttled": 0}


def test_by_default_ten_wrong_credentials_hold_an_address_back(
    tmp_path: Path, sim: Process
) -> None:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {"pepper": PEPPER, "key_store": {"sqlite_path": str(tmp_path / "k.db")}}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    with run_gateway(tmp_path, config) as gateway, client("127.0.0.7") as guesser:
        for n in range(10):
            assert keys(guesser, gateway, f"wrong-{n}").status_code == 401
        refused = keys(guesser, gateway, ADMIN_TOKEN)
        assert refused.status_code == 429
        assert 290 <= int(refused.headers["retry-after"]) <= 300
