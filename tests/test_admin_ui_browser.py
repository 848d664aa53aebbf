"""The admin web UI in a real browser: Debian's headless Chromium driven by Selenium
through the system chromedriver, against a real gateway in front of the simulator.

Every page is checked with axe-core (vendored in tests/vendor, injected by the test,
never served by the gateway) and screenshotted into the test's tmp dir; every request
the pages made is read from Chrome's performance log and must stay on the gateway's
origin.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from gateway.admin.sessions import COOKIE_NAME
from tests.servers import Process, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-the-browser-tests-0123456789"
PEPPER = "pepper-for-the-browser-tests-0123456789abc"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TENANT = "ui-tenant"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
PAGES = ["tenants", "keys", "usage", "upstreams", "audit"]
WAIT_S = 15


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {"pepper": PEPPER, "key_store": {"sqlite_path": str(module_tmp / "k.db")}}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["limits"] = {"tenants": {TENANT: {"quotas": {"requests_per_day": 50}}}}
    with run_gateway(module_tmp, config) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} missing: run scripts/install-system-deps.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin-ui-screenshots")


def wait(driver: WebDriver, css: str, *, visible: bool = True) -> WebElement:
    def found(d: WebDriver) -> WebElement | bool:
        elements = d.find_elements(By.CSS_SELECTOR, css)
        shown = [e for e in elements if e.is_displayed() or not visible]
        return shown[0] if shown else False

    element: WebElement = until(driver, found)
    return element


def wait_text(driver: WebDriver, css: str, text: str) -> WebElement:
    until(driver, lambda d: text in wait(d, css).text)
    return wait(driver, css)


def open_page(driver: WebDriver, gateway: Process, name: str) -> WebElement:
    driver.get(f"{gateway.url}/admin/ui#/{name}")
    return wait(driver, f'[data-page="{name}"][aria-busy="false"]')


def sign_in(driver: WebDriver, gateway: Process, token: str = ADMIN_TOKEN) -> None:
    driver.get(f"{gateway.url}/admin/ui")
    field = wait(driver, "#token")
    field.send_keys(token)
    wait(driver, '#sign-in-form button[type="submit"]').click()


def chat(gateway: Process, key: str) -> int:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).status_code


def until(driver: WebDriver, check: Any) -> Any:
    # A list re-rendered under the check leaves stale elements: look again.
    ignored = [StaleElementReferenceException]
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=ignored).until(check)


def row_of(driver: WebDriver, key_id: str) -> WebElement:
    rows = [
        r for r in driver.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr") if key_id in r.text
    ]
    assert len(rows) == 1, [r.text for r in rows]
    return rows[0]


def requests_counted(gateway: Process, key_id: str, at_least: int) -> None:
    headers = ADMIN
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        usage = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=headers).json()
        if usage["total"]["requests"] >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"usage of {key_id} stayed below {at_least}: {usage}")


def test_a_wrong_token_is_refused_at_sign_in(browser: WebDriver, gateway: Process) -> None:
    browser.delete_all_cookies()
    sign_in(browser, gateway, "not-the-admin-token-0123456789abcdef")
    wait_text(browser, "#sign-in-error", "not an admin token")
    assert not wait(browser, "#nav", visible=False).is_displayed()
    assert browser.get_cookies() == []
    # Nothing the browser keeps holds the token: no storage, and the field was cleared.
    stored = browser.execute_script("return [localStorage.length, sessionStorage.length]")
    assert stored == [0, 0]
    assert wait(browser, "#token").get_attribute("value") == ""


def test_keys_created_copied_once_rotated_revoked_and_counted(
    browser: WebDriver, gateway: Process, shots: Path
) -> None:
    browser.delete_all_cookies()
    sign_in(browser, gateway)
    wait(browser, "#nav")
    (cookie,) = browser.get_cookies()
    assert cookie["name"] == COOKIE_NAME and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: out of JS's reach

    open_page(browser, gateway, "keys")
    wait(browser, "#new-key-tenant").send_keys(TENANT)
    wait(browser, "#new-key-name").send_keys("from the browser")
    wait(browser, "#create-key").click()
    secret = wait(browser, "#new-secret").text
    key_id = wait(browser, "#secret-title").text.split()[2]
    assert secret.startswith("vgw_") and key_id in secret
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": gateway.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    wait(browser, "#copy-secret").click()
    wait_text(browser, "#secret-slot [role=status]", "Copied.")
    copied = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[arguments.length - 1])"
    )
    assert copied == secret
    browser.save_screenshot(str(shots / "key-created.png"))
    assert chat(gateway, secret) == 200

    # Shown once: another section and back, and the secret is nowhere in the page.
    open_page(browser, gateway, "usage")
    open_page(browser, gateway, "keys")
    wait(browser, "#keys-table")
    assert secret not in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, "#new-secret") == []
    assert "active" in row_of(browser, key_id).text

    # Rotate with an hour's grace: the new secret and the old one both work.
    wait(browser, f'[data-rotate="{key_id}"]').click()
    grace = wait(browser, "dialog #grace-seconds")
    grace.clear()
    grace.send_keys("3600")
    wait(browser, "dialog [data-confirm]").click()
    rotated = (
        wait_text(browser, "#secret-title", "Rotated key") and wait(browser, "#new-secret").text
    )
    assert rotated != secret and rotated.startswith("vgw_")
    assert chat(gateway, rotated) == 200
    assert chat(gateway, secret) == 200
    until(browser, lambda d: "UTC" in row_of(d, key_id).text.split("active")[1])

    # The requests show in the usage table (and chart) of this key.
    requests_counted(gateway, key_id, 3)
    open_page(browser, gateway, "usage")
    table = wait(browser, "#usage-table")
    rows = [r for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if key_id in r.text]
    assert len(rows) == 1
    cells = [c.text for c in rows[0].find_elements(By.CSS_SELECTOR, "td")]
    assert cells[1] == key_id and int(cells[2]) >= 3
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    browser.save_screenshot(str(shots / "usage-after-requests.png"))

    # Revoke: cancelling changes nothing; confirming refuses both secrets at once.
    open_page(browser, gateway, "keys")
    wait(browser, f'[data-revoke="{key_id}"]').click()
    wait(browser, "dialog")
    next(
        b for b in browser.find_elements(By.CSS_SELECTOR, "dialog button") if b.text == "Cancel"
    ).click()
    assert "active" in row_of(browser, key_id).text
    wait(browser, f'[data-revoke="{key_id}"]').click()
    wait(browser, "dialog [data-confirm]").click()
    until(browser, lambda d: "revoked" in row_of(d, key_id).text)
    assert chat(gateway, rotated) == 401
    assert chat(gateway, secret) == 401


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    driver.execute_script(AXE.read_text())
    violations: list[dict[str, Any]] = driver.execute_async_script(
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => arguments[arguments.length - 1](r.violations))"
    )
    return [v for v in violations if v["impact"] in ("serious", "critical")]


def requested_urls(driver: WebDriver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_every_page_is_accessible_stays_on_its_origin_and_is_screenshotted(
    browser: WebDriver, gateway: Process, shots: Path
) -> None:
    browser.delete_all_cookies()
    requested_urls(browser)  # drop what earlier tests made
    browser.get(f"{gateway.url}/admin/ui")
    wait(browser, "#token")
    assert axe_violations(browser) == [], "sign-in page"
    browser.save_screenshot(str(shots / "sign-in.png"))
    sign_in(browser, gateway)
    wait(browser, "#nav")
    for name in PAGES:
        container = open_page(browser, gateway, name)
        errors = [e.text for e in container.find_elements(By.CSS_SELECTOR, ".error") if e.text]
        assert errors == [], name
        assert axe_violations(browser) == [], name
        browser.save_screenshot(str(shots / f"{name}.png"))
    # Without the tenant routes the page says so, and shows the tenants of the keys;
    # either way the tenant's quota (from the settings) is a bar.
    tenants = httpx.get(f"{gateway.url}/admin/v1/tenants", headers=ADMIN)
    open_page(browser, gateway, "tenants")
    if tenants.status_code == 404:
        wait(browser, "[data-unavailable]")
    if tenants.status_code == 404 or TENANT in {t["name"] for t in tenants.json()["data"]}:
        wait(browser, f'[aria-labelledby="tenant-{TENANT}"] meter')
    urls = requested_urls(browser)
    assert any(url.endswith("/admin/v1/upstreams") for url in urls)
    assert any("/admin/v1/tenants/" in url and url.endswith("/quota") for url in urls)
    foreign = [u for u in urls if not (u.startswith(gateway.url + "/") or u.startswith("data:"))]
    assert foreign == []
    assert {f"{n}.png" for n in PAGES} <= {p.name for p in shots.iterdir()}


def test_axe_does_find_a_planted_violation(browser: WebDriver, gateway: Process) -> None:
    """The accessibility checks above could pass by axe not running at all: not so."""
    browser.delete_all_cookies()
    browser.get(f"{gateway.url}/admin/ui")
    wait(browser, "#token")
    browser.execute_script("document.getElementById('token').removeAttribute('id')")
    assert {v["id"] for v in axe_violations(browser)} == {"label"}
