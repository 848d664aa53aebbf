"""A real Prometheus for the tests, and the PromQL of the shipped Grafana dashboard.

Prometheus is Debian's `prometheus` package (`scripts/install-system-deps.sh`
installs it); its config is the shipped `deploy/prometheus/prometheus.yml`
with the targets and intervals a test gives it, and the shipped alerting rules
beside it, where its `rule_files` finds them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import free_port, stop, wait_for_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vllm-gateway.json"
READY_TIMEOUT_S = 60.0
# Grafana's variable syntaxes: ${name}, ${name:format} and $name.
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)")


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")
    if found is None:
        raise RuntimeError("prometheus is not installed: run `bash scripts/install-system-deps.sh`")
    return found


def scrape_config(
    jobs: Mapping[str, list[str]],
    interval: str = "1s",
    *,
    discovered: Mapping[str, HttpSd] | None = None,
) -> dict[str, Any]:
    """The shipped Prometheus config with JOBS' targets (job name -> host:port list),
    which replace the job's service discovery, and DISCOVERED jobs' HTTP service
    discovery pointed elsewhere (the rest of the shipped `http_sd_configs` kept)."""
    discovered = discovered or {}
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    shipped = {job["job_name"]: job for job in config["scrape_configs"]}
    given = set(jobs) | set(discovered)
    assert set(shipped) == given, f"the shipped config scrapes {sorted(shipped)}"
    for name, targets in jobs.items():
        shipped[name].pop("http_sd_configs", None)
        shipped[name]["static_configs"] = [{"targets": targets}]
    for name, sd in discovered.items():
        (http_sd,) = shipped[name]["http_sd_configs"]
        http_sd["url"] = sd.url
        http_sd["refresh_interval"] = interval
        if sd.credentials_file is None:
            http_sd.pop("authorization", None)
        else:
            http_sd["authorization"] = {"type": "Bearer"}
            http_sd["authorization"]["credentials_file"] = str(sd.credentials_file)
    return config


@dataclass(frozen=True)
class HttpSd:
    """Where a job's HTTP service discovery asks, and the file holding its credential
    (None: none sent, as on the admin listener with `metrics.listener: admin`)."""

    url: str
    credentials_file: Path | None


class PromQLError(Exception):
    """Prometheus refused a query (it did not parse, or failed to evaluate)."""


@dataclass
class Prometheus:
    url: str
    # Queries are evaluated at this Unix time (None: now), so that a test reads the
    # same window however long it runs.
    at: float | None = None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector EXPR evaluates to; PromQLError when Prometheus refuses it."""
        params = {"query": expr} if self.at is None else {"query": expr, "time": str(self.at)}
        response = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise PromQLError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str, *by: str) -> dict[tuple[str, ...], float]:
        """EXPR's samples, keyed by the values of the labels BY."""
        return {
            tuple(sample["metric"].get(label, "") for label in by): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def variable_values(self, definition: str) -> list[str]:
        """What a Grafana query variable `label_values(METRIC, LABEL)` lists."""
        parsed = _LABEL_VALUES.fullmatch(definition)
        assert parsed is not None, f"not a label_values() query: {definition}"
        match, label = parsed.groups()
        params = {"match[]": match}
        response = httpx.get(f"{self.url}/api/v1/label/{label}/values", params=params, timeout=30)
        response.raise_for_status()
        values: list[str] = response.json()["data"]
        return values

    def rules(self) -> list[dict[str, Any]]:
        """Every rule Prometheus loaded, with its health and active alerts (/api/v1/rules)."""
        response = httpx.get(f"{self.url}/api/v1/rules", timeout=30)
        response.raise_for_status()
        groups = response.json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_for_scrapes(self, after: float, timeout: float = 60.0) -> None:
        """Wait until every target was scraped at least once after the Unix time AFTER."""
        assert self.at is None, "a pinned Prometheus sees no new scrapes"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            scraped = self.query("timestamp(up)")
            if scraped and all(float(sample["value"][1]) > after for sample in scraped):
                return
            time.sleep(0.2)
        raise TimeoutError(f"not every target was scraped after {after}: {scraped}")


@contextmanager
def run_prometheus(tmp_path: Path, config: dict[str, Any]) -> Iterator[Prometheus]:
    """A real Prometheus on a free loopback port, stopped (whatever happens) on exit."""
    port = free_port()
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    # rule_files is relative to the config's directory: a glob that matches nothing
    # would load no rule, silently.
    shutil.copy(ALERT_RULES, tmp_path / ALERT_RULES.name)
    args = [
        prometheus_binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # Series this young are still in the head block: nothing needs compacting.
        "--storage.tsdb.retention.time=1d",
    ]
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log_path)
        prometheus = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while httpx.get(f"{prometheus.url}/-/ready", timeout=5).status_code != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"Prometheus is not ready:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        stop(proc)


@dataclass(frozen=True)
class Target:
    panel: str
    ref_id: str
    expr: str


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: Mapping[str, Any]) -> list[Target]:
    return [
        Target(panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def interpolate(expr: str, variables: Mapping[str, str]) -> str:
    """EXPR as Grafana sends it: `$name` and `${name}` replaced by VARIABLES' values."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"{expr}: no value for ${name}")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable as Grafana formats it for a Prometheus regex matcher."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def has_number(result: list[dict[str, Any]]) -> bool:
    """At least one sample is a number: a quantile of an empty window is NaN."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)
