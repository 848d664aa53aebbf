"""Settings: one typed object from YAML plus VGW_* overrides; bad values stop the start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.settings import SettingsError, load_settings, normalize_upstream_url

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway.example.yaml"


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, {})
    assert settings.listen.host == "127.0.0.1"
    assert settings.listen.port == 8080
    assert settings.models == []
    assert not settings.listen.tls.enabled


def test_example_file_loads() -> None:
    settings = load_settings(EXAMPLE, {"VGW_AUTH__PEPPER": "x" * 48})
    assert settings.models, "the example configures at least one model"


def test_models_without_a_pepper_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"auth\.pepper is required"):
        load_settings(EXAMPLE, {})
    with pytest.raises(SettingsError, match="32 or more"):
        load_settings(EXAMPLE, {"VGW_AUTH__PEPPER": "short-pepper"})


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"listen": {"port": 9000}, "timeouts": {"idle": 30}})
    env = {
        "VGW_LISTEN__PORT": "9100",
        "VGW_LOG__FORMAT": "text",
        "VGW_MODELS": '[{"name": "m", "replicas": [{"url": "10.0.0.5:8000"}]}]',
        "VGW_AUTH__PEPPER": "p" * 40,
        "OTHER": "ignored",
    }
    settings = load_settings(path, env)
    assert settings.listen.port == 9100
    assert settings.timeouts.idle == 30
    assert settings.log.format == "text"
    assert settings.models[0].replicas[0].url == "http://10.0.0.5:8000"


def test_env_values_that_look_like_numbers_stay_text_where_text_is_wanted() -> None:
    env = {
        # A pepper of digits (YAML would read 0123... as an octal number) and a port.
        "VGW_AUTH__PEPPER": "0123456789" * 4,
        "VGW_ADMIN__TOKENS": '["00000000000000000000000000000042"]',
        "VGW_LISTEN__PORT": "9100",
        "VGW_LIMITS__ON_BACKEND_ERROR": "closed",
        "VGW_UPSTREAMS__LOAD__SHED_WAITING_ABOVE": "null",
        "VGW_METRICS__KEY_LABEL": "true",
        "VGW_LIMITS__REDIS_URL": "redis://user:a: b@redis:6379/0",
    }
    settings = load_settings(None, env)
    assert settings.auth.pepper is not None
    assert settings.auth.pepper.get_secret_value() == "0123456789" * 4
    assert settings.admin.tokens[0].get_secret_value() == "00000000000000000000000000000042"
    assert settings.listen.port == 9100
    assert settings.upstreams.load.shed_waiting_above is None
    assert settings.metrics.key_label is True
    assert settings.limits.redis_url is not None
    assert settings.limits.redis_url.get_secret_value() == "redis://user:a: b@redis:6379/0"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("http://vllm.internal:8000/", "http://vllm.internal:8000"),
        ("https://gpu.example.com/v1", "https://gpu.example.com"),
        ("http://ingress.example.com/serve/v1/", "http://ingress.example.com/serve"),
    ],
)
def test_upstream_urls_are_normalized(raw: str, normalized: str) -> None:
    assert normalize_upstream_url(raw) == normalized


@pytest.mark.parametrize(
    ("data", "env", "field"),
    [
        ({"listen": {"port": 70000}}, {}, "listen.port"),
        ({"listen": {"prot": 80}}, {}, "listen.prot"),
        ({}, {"VGW_TIMEOUTS__IDLE": "-1"}, "timeouts.idle"),
        (
            {"models": [{"name": "m", "replicas": [{"url": "ftp://x"}]}]},
            {},
            "models.0.replicas.0.url",
        ),
        (
            {"models": [{"name": "m", "replicas": [{"url": "x:1", "api_key": "changeme"}]}]},
            {},
            "models.0.replicas.0.api_key",
        ),
        ({"models": [{"name": "m"}, {"name": "m"}]}, {}, "models"),
        ({"listen": {"tls": {"certfile": "/nonexistent.pem"}}}, {}, "listen.tls"),
        ({"listen": {"tls": {"certfile": "/a", "keyfile": "/b"}}}, {}, "listen.tls"),
        ({"log": {"level": "loud"}}, {}, "log.level"),
        ({"admin": {"failed_sign_ins": {"limit": 0}}}, {}, "admin.failed_sign_ins.limit"),
        ({}, {"VGW_ADMIN__FAILED_SIGN_INS__WINDOW": "0"}, "admin.failed_sign_ins.window"),
        ({"upstreams": {"affinity": {"by": "prefix"}}}, {}, "upstreams.affinity.by"),
        ({"upstreams": {"affinity": {"header": "X Session"}}}, {}, "upstreams.affinity.header"),
        ({"upstreams": {"affinity": {"header": ""}}}, {}, "upstreams.affinity.header"),
        ({}, {"VGW_UPSTREAMS__AFFINITY__MAX_LOAD": "0.9"}, "upstreams.affinity.max_load"),
        ({"upstreams": {"affinity": {"prefix_chars": 8}}}, {}, "upstreams.affinity.prefix_chars"),
        (
            {"upstreams": {"affinity": {"prefix_chars": "4k"}}},
            {},
            "upstreams.affinity.prefix_chars",
        ),
    ],
)
def test_invalid_settings_name_the_field(
    tmp_path: Path, data: object, env: dict[str, str], field: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, data), env)
    assert f"  {field}:" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("listen: [", "not valid YAML"), ("- a\n- b\n", "mapping at the top level")],
)
def test_unreadable_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(path, {})


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", {})


def test_secrets_never_show_in_the_settings_repr(tmp_path: Path) -> None:
    data = {
        "models": [{"name": "m", "replicas": [{"url": "x:1", "api_key": "s3cr3t-value"}]}],
        "auth": {"pepper": "pepper-value-" + "p" * 32},
        "admin": {"tokens": ["admin-token-value-0123456789"]},
    }
    settings = load_settings(write(tmp_path, data), {})
    for secret in ("s3cr3t-value", "pepper-value-", "admin-token-value"):
        assert secret not in repr(settings)
        assert secret not in settings.model_dump_json()


def test_serve_stops_at_start_with_the_field_named(tmp_path: Path) -> None:
    path = write(tmp_path, {"listen": {"port": "eighty"}})
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "listen.port" in result.stderr
    assert "Traceback" not in result.stderr
