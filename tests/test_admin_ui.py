"""The admin web UI's server side on a real gateway: sign-in sessions, CSRF, headers.

What the browser does with it is in test_admin_ui_browser.py.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import jwt
import pytest
import trustme

from gateway.admin.sessions import COOKIE_NAME, SessionStore
from gateway.admin.ui_routes import CONTENT_SECURITY_POLICY
from tests.servers import Process, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-the-ui-tests-0123456789"
PEPPER = "pepper-for-the-ui-tests-0123456789abcdef"


def ui_config(sim: Process, tmp: Path, **admin: object) -> dict[str, object]:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {"pepper": PEPPER, "key_store": {"sqlite_path": str(tmp / "ui-keys.db")}}
    config["admin"] = {"tokens": [ADMIN_TOKEN], **admin}
    return config


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    with run_gateway(module_tmp, ui_config(sim, module_tmp)) as process:
        yield process


def sign_in(client: httpx.Client, token: str = ADMIN_TOKEN) -> httpx.Response:
    return client.post("/admin/ui/session", json={"token": token})


def set_cookie(response: httpx.Response) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def test_sign_in_sets_a_strict_http_only_cookie_and_gives_a_csrf_token(gateway: Process) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        response = sign_in(client)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["identity"] == "token:0" and len(body["csrf_token"]) >= 32
    assert ADMIN_TOKEN not in response.text
    morsel = set_cookie(response)[COOKIE_NAME]
    assert len(morsel.value) >= 32
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/admin"
    assert morsel["secure"] == ""  # plain HTTP: a Secure cookie would never come back
    assert morsel["max-age"] == ""  # gone with the browser; the server ends it sooner


@pytest.mark.parametrize(
    "body",
    [
        {"token": "not-the-admin-token-0123456789abcdef"},
        {"token": ""},
        {"tok": ADMIN_TOKEN},
        [ADMIN_TOKEN],
    ],
)
def test_a_wrong_token_is_refused_and_sets_no_cookie(gateway: Process, body: object) -> None:
    response = httpx.post(f"{gateway.url}/admin/ui/session", json=body)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"]["code"] in ("invalid_admin_credentials", "bad_sign_in")
    assert "set-cookie" not in response.headers


def test_sign_in_needs_json_so_a_cross_site_form_cannot_post_it(gateway: Process) -> None:
    response = httpx.post(f"{gateway.url}/admin/ui/session", data={"token": ADMIN_TOKEN})
    assert response.status_code == 400
    assert "set-cookie" not in response.headers


def test_the_cookie_reads_the_api_but_changes_need_the_csrf_header(gateway: Process) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        csrf = sign_in(client).json()["csrf_token"]
        assert client.get("/admin/v1/keys").status_code == 200
        refused = client.post("/admin/v1/keys", json={"tenant": "csrf"})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_token_invalid"
        wrong = client.post(
            "/admin/v1/keys", json={"tenant": "csrf"}, headers={"X-CSRF-Token": csrf[:-1] + "x"}
        )
        assert wrong.status_code == 403
        listed = client.get("/admin/v1/keys", params={"tenant": "csrf"}).json()["data"]
        assert listed == []  # neither refused call created anything
        created = client.post(
            "/admin/v1/keys", json={"tenant": "csrf"}, headers={"X-CSRF-Token": csrf}
        )
        assert created.status_code == 201, created.text
        audit = client.get("/admin/v1/audit").json()["data"]
    assert audit[0]["action"] == "key.create" and audit[0]["actor"] == "token:0"


def test_bearer_tokens_work_as_before_and_ignore_the_cookie(gateway: Process) -> None:
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.post(
        f"{gateway.url}/admin/v1/keys", json={"tenant": "b"}, headers=bearer
    ).is_success
    with httpx.Client(base_url=gateway.url) as client:
        csrf = sign_in(client).json()["csrf_token"]
        # A wrong Bearer credential decides alone: the valid cookie beside it does not help.
        wrong = {"Authorization": "Bearer nope", "X-CSRF-Token": csrf}
        assert client.get("/admin/v1/keys", headers=wrong).status_code == 401
    assert httpx.get(f"{gateway.url}/admin/v1/keys").status_code == 401


def test_signing_in_again_ends_the_session_before(gateway: Process) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        sign_in(client)
        first = client.cookies[COOKIE_NAME]
        sign_in(client)
        assert client.cookies[COOKIE_NAME] != first
        assert client.get("/admin/v1/keys").status_code == 200
    replay = {"Cookie": f"{COOKIE_NAME}={first}"}
    assert httpx.get(f"{gateway.url}/admin/v1/keys", headers=replay).status_code == 401


def test_sign_out_ends_the_session_on_the_server(gateway: Process) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        csrf = sign_in(client).json()["csrf_token"]
        cookie = client.cookies[COOKIE_NAME]
        assert client.delete("/admin/ui/session").status_code == 403  # CSRF needed here too
        out = client.delete("/admin/ui/session", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        assert set_cookie(out)[COOKIE_NAME]["max-age"] == "0"
        assert client.get("/admin/ui/session").status_code == 401
    # The old cookie, replayed, is worth nothing: the session is gone from the store.
    replay = {"Cookie": f"{COOKIE_NAME}={cookie}"}
    assert httpx.get(f"{gateway.url}/admin/v1/keys", headers=replay).status_code == 401


def test_every_ui_answer_carries_the_security_headers(gateway: Process) -> None:
    paths = ["/admin/ui", "/admin/ui/", "/admin/ui/static/app.js", "/admin/ui/static/app.css"]
    with httpx.Client(base_url=gateway.url) as client:
        answers = [client.get(path) for path in paths]
        answers.append(client.get("/admin/ui/static/nothing.js"))
        answers.append(client.get("/admin/ui/session"))
        answers.append(sign_in(client, "wrong-token-0123456789abcdef"))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 401, 401]
    for answer in answers:
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
    assert answers[0].headers["content-type"].startswith("text/html")
    assert answers[2].headers["content-type"].startswith("text/javascript")
    assert answers[3].headers["content-type"].startswith("text/css")
    page = answers[0].text
    # No inline script or style anywhere the CSP would have to allow.
    assert "<script>" not in page and "style=" not in page and "<style" not in page


def test_the_ui_files_hold_no_inline_code_and_no_other_origin() -> None:
    folder = Path(__file__).parent.parent / "gateway" / "admin" / "ui"
    for path in folder.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in text, path
        for banned in ("innerHTML", "localStorage", "sessionStorage", "eval(", "style="):
            assert banned not in text, (path, banned)


def test_without_the_ui_there_is_no_page_and_no_cookie_login(tmp_path: Path, sim: Process) -> None:
    config = ui_config(sim, tmp_path, ui={"enabled": False})
    with run_gateway(tmp_path, config) as gateway:
        assert httpx.get(f"{gateway.url}/admin/ui").status_code == 404
        response = httpx.post(f"{gateway.url}/admin/ui/session", json={"token": ADMIN_TOKEN})
        assert response.status_code == 404


def test_over_https_the_cookie_is_secure(tmp_path: Path, sim: Process) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    config = ui_config(sim, tmp_path)
    listen = config["listen"]
    assert isinstance(listen, dict)
    listen["tls"] = {"certfile": str(certfile), "keyfile": str(keyfile)}
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with run_gateway(tmp_path, config) as gateway:
        url = f"https://127.0.0.1:{gateway.port}"
        with httpx.Client(base_url=url, verify=context) as client:
            response = sign_in(client)
            assert response.status_code == 201
            assert set_cookie(response)[COOKIE_NAME]["secure"] is True
            assert client.get("/admin/v1/keys").status_code == 200


def test_an_admin_jwt_signs_in_on_the_admin_listener(tmp_path: Path, sim: Process) -> None:
    secret = "an-hs256-secret-for-the-ui-tests-0123456789abcdef"
    admin_port = free_port()
    config = ui_config(sim, tmp_path, jwt_claim="vgw_admin")
    config["admin"]["listen"] = {"host": "127.0.0.1", "port": admin_port}  # type: ignore[index]
    config["auth"]["jwt_issuers"] = [  # type: ignore[index]
        {"issuer": "https://idp.test/", "algorithms": ["HS256"], "hs_secret": secret}
    ]
    claims = {"iss": "https://idp.test/", "sub": "ops-alice", "exp": int(time.time()) + 300}
    admin_jwt = jwt.encode({**claims, "vgw_admin": True}, secret, algorithm="HS256")
    user_jwt = jwt.encode(claims, secret, algorithm="HS256")
    with run_gateway(tmp_path, config) as gateway:
        # Only on the admin listener: the client one has no /admin at all.
        assert httpx.get(f"{gateway.url}/admin/ui").status_code == 404
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}") as client:
            assert client.get("/admin/ui").status_code == 200
            assert sign_in(client, user_jwt).status_code == 401
            answer = sign_in(client, admin_jwt)
            assert answer.status_code == 201 and answer.json()["identity"] == "jwt:ops-alice"
            created = client.post(
                "/admin/v1/keys",
                json={"tenant": "jwt"},
                headers={"X-CSRF-Token": answer.json()["csrf_token"]},
            )
            assert created.status_code == 201
            audit = client.get("/admin/v1/audit").json()["data"]
    assert audit[0]["actor"] == "jwt:ops-alice"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_end_when_idle_when_old_and_when_too_many() -> None:
    clock = Clock()
    store = SessionStore(idle_seconds=60, max_age_seconds=300, max_sessions=2, clock=clock)
    idle_id, _ = store.create("token:0")
    clock.now += 61
    assert store.get(idle_id) is None
    old_id, _ = store.create("token:0")
    for _ in range(6):  # kept busy, it still ends at its maximum age
        clock.now += 50
        assert store.get(old_id) is not None
    clock.now += 1
    assert store.get(old_id) is None
    first, _ = store.create("jwt:a")
    second, _ = store.create("jwt:b")
    assert store.get(first) is not None  # now the most recently used
    third, _ = store.create("jwt:c")
    assert len(store) == 2
    assert store.get(second) is None and store.get(first) is not None
    assert store.get(third) is not None
    assert store.get("") is None and store.get(first + "x") is None
