"""The root settings object and how it is loaded: a YAML file plus `VGW_*` overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.settings.access import AdminSettings, AuthSettings
from gateway.settings.base import ENV_NESTING, ENV_PREFIX, SettingsError, _Strict
from gateway.settings.limits import PriceSettings, RateLimitSettings
from gateway.settings.network import (
    EdgeSettings,
    ListenSettings,
    TimeoutSettings,
    UpstreamTLSSettings,
)
from gateway.settings.operations import (
    DrainSettings,
    LogSettings,
    MetricsSettings,
    ProbeSettings,
    ResponsesSettings,
    TracingSettings,
)
from gateway.settings.upstreams import ModelSettings, UpstreamSettings


class Settings(_Strict):
    listen: ListenSettings = ListenSettings()
    edge: EdgeSettings = EdgeSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    upstream_tls: UpstreamTLSSettings = UpstreamTLSSettings()
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # multipart/form-data uploads (audio routes): OpenAI's own limit is 25 MB.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # 0 means no limit; vLLM replicas take hundreds of concurrent streams each.
    upstream_max_connections: int = Field(default=0, ge=0)
    # Which HTTP client forwards requests: aiohttp, or the gateway's own HTTP/1.1 client
    # (gateway.proxy.h1pool), cheaper per request. Health checks use aiohttp either way.
    upstream_client: Literal["aiohttp", "native"] = "native"
    models: list[ModelSettings] = Field(default_factory=list)
    # Another name for one or more models, tried in order (gateway.upstreams.aliases).
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    upstreams: UpstreamSettings = UpstreamSettings()
    auth: AuthSettings = AuthSettings()
    admin: AdminSettings = AdminSettings()
    limits: RateLimitSettings = RateLimitSettings()
    # Model -> price, for cost quotas; a model without a price costs nothing.
    pricing: dict[str, PriceSettings] = Field(default_factory=dict)
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    drain: DrainSettings = DrainSettings()
    probes: ProbeSettings = ProbeSettings()
    responses: ResponsesSettings = ResponsesSettings()
    # Gateway processes on this host, sharing its port. More than one are replicas:
    # their keys and limits must be in Redis.
    workers: int = Field(default=1, ge=1, le=256)

    @model_validator(mode="after")
    def _workers_share_through_redis(self) -> Settings:
        if self.workers == 1:
            return self
        if not self.models:
            raise ValueError("workers > 1 needs models (the embedded simulator is for one process)")
        if self.limits.backend != "redis" or self.auth.key_store.backend != "redis":
            raise ValueError(
                "workers > 1 needs limits.backend: redis and auth.key_store.backend: redis "
                "(in-process limits and SQLite key caches cannot be shared between processes)"
            )
        return self

    @model_validator(mode="after")
    def _admin_metrics_need_the_admin_listener(self) -> Settings:
        if self.metrics.listener == "admin" and self.admin.listen is None:
            raise ValueError("metrics.listener: admin needs admin.listen")
        return self

    @model_validator(mode="after")
    def _redis_limits_need_a_url(self) -> Settings:
        if self.limits.backend == "redis" and self.limits_redis_url is None:
            raise ValueError(
                "limits.redis_url (or auth.key_store.redis_url) is required "
                "when limits.backend is redis"
            )
        return self

    @property
    def limits_redis_url(self) -> str | None:
        url = self.limits.redis_url or self.auth.key_store.redis_url
        return None if url is None else url.get_secret_value()

    @model_validator(mode="after")
    def _keys_need_a_pepper(self) -> Settings:
        # Without models the embedded default runs and makes its own pepper.
        pepper = self.auth.pepper
        if self.models and pepper is None:
            raise ValueError("auth.pepper is required (32 or more random characters)")
        if pepper is not None and len(pepper.get_secret_value()) < 32:
            raise ValueError("auth.pepper must be 32 or more characters")
        return self

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _aliases_name_models(self) -> Settings:
        models = {model.name for model in self.models}
        for alias, targets in self.aliases.items():
            _check_alias(alias, targets, models, self.aliases)
        return self


def _check_alias(
    alias: str, targets: list[str], models: set[str], aliases: dict[str, list[str]]
) -> None:
    """An alias names configured models only: no alias of an alias (no cycles), no
    alias that hides a model, no empty or repeated target."""
    if not alias:
        raise ValueError("aliases: an alias name must be a non-empty string")
    if alias in models:
        raise ValueError(f"aliases: '{alias}' is a model's name; an alias needs a name of its own")
    if not targets:
        raise ValueError(f"aliases: '{alias}' needs at least one model")
    for target in targets:
        if target in aliases:
            raise ValueError(f"aliases: '{alias}' names the alias '{target}'; name models only")
        if target not in models:
            raise ValueError(f"aliases: '{alias}' names '{target}', which is not in models")
    if len(set(targets)) != len(targets):
        raise ValueError(f"aliases: '{alias}' names a model more than once")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`VGW_LISTEN__PORT=9000` becomes `{"listen": {"port": "9000"}}`; lists and mappings
    are YAML."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split(ENV_NESTING)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{key}: conflicts with another VGW_ variable")
            node = child
        node[path[-1]] = _env_value(raw)
    return tree


def _env_value(raw: str) -> Any:
    """A value in `[...]` or `{...}` is YAML (a list or a mapping), `null` or `~` is None;
    anything else stays the exact text, which the settings convert, so a secret made of
    digits or holding a colon is not read as something else."""
    text = raw.strip()
    if text in ("null", "~"):
        return None
    if not text.startswith(("[", "{")):
        return raw
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return raw


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping at the top level")
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {field}: {error['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the settings; raise SettingsError naming each bad field.

    `environ` defaults to the process environment: this is the one place that reads it.
    """
    data = _read_yaml(path) if path is not None else {}
    data = _merge(data, _env_overrides(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
