"""The shipped alerting rules (deploy/prometheus/alerts.yml) and what they stand on.

promtool (Debian's `prometheus` package, `scripts/install-system-deps.sh`) checks the
rules and the Prometheus config that loads them, and runs the rules' unit tests
(alerts.test.yml). Every metric a rule reads must be one a running gateway or
simulator exports, under the same type, and every alert must lead to its section
of docs/runbook.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy_files import REPO, host_path, resolved
from tests.servers import Process

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
SEVERITIES = {"critical", "warning"}
METRIC_NAME = re.compile(r"\b(?:gateway_\w+|vllm:[\w:]+)")
# The suffixes of a family's samples in the text format, and the type that has them.
SUFFIX_TYPES = {
    "_total": "counter",
    "_bucket": "histogram",
    "_count": "histogram",
    "_sum": "histogram",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if binary is None:
        pytest.fail("promtool is not installed: run `bash scripts/install-system-deps.sh`")
    command = [binary, *args]
    return subprocess.run(
        command, cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def github_anchor(heading: str) -> str:
    """The id GitHub (and most Markdown renderers) give a heading."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def test_the_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_the_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_shipped_config_loads_the_rules() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]


def test_every_alert_fires_and_resolves_in_the_unit_tests() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in alerts():
        name = alert["alert"]
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a case that fires and one that does not"


def test_every_alert_is_labelled_and_has_a_runbook_section() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)) >= 12
    for alert in alerts():
        name, annotations = alert["alert"], alert["annotations"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert annotations["summary"] and annotations["description"], name
        assert re.fullmatch(r"\d+m", alert["for"]), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbook.md", name
        assert anchor == name.lower() and anchor in anchors, name
    assert "runbook.md" in (REPO / "docs" / "observability.md").read_text()


def exported(url: str) -> dict[str, str]:
    """Metric family name -> type, as the process at URL exports them."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def family_of(name: str) -> tuple[str, str]:
    """A sample name as a rule reads it -> (its family's name, the family's type)."""
    for suffix, kind in SUFFIX_TYPES.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), kind
    return name, "gauge"


def test_every_metric_the_rules_read_is_exported(gateway: Process, sim: Process) -> None:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=gateway.auth, timeout=30
    )
    assert answer.status_code == 200, answer.text
    families = {"gateway_": exported(gateway.url), "vllm:": exported(sim.url)}
    used = {name for alert in alerts() for name in METRIC_NAME.findall(alert["expr"])}
    assert {name.split("_")[0].split(":")[0] for name in used} == {"gateway", "vllm"}
    missing = []
    for name in sorted(used):
        family, kind = family_of(name)
        source = families["vllm:" if name.startswith("vllm:") else "gateway_"]
        if source.get(family) != kind:
            missing.append(f"{name}: {family} is {source.get(family, 'not exported')}")
    assert missing == []


def test_compose_mounts_the_rules_where_prometheus_reads_them(tmp_path: Path) -> None:
    prometheus = resolved(tmp_path, "sim")["services"]["prometheus"]
    config_path = "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load(host_path(prometheus, config_path).read_text())
    for rule_file in config["rule_files"]:
        mounted = str(Path(config_path).parent / rule_file)
        assert host_path(prometheus, mounted) == RULES
