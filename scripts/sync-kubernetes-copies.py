"""Refresh the copies the Kubernetes components ship (Kustomize reads no file outside
a component's directory): the Grafana dashboard, and the alert rules as a
PrometheusRule. tests/test_kubernetes.py fails while a copy differs.

    python scripts/sync-kubernetes-copies.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "deploy" / "kubernetes" / "components"
HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by scripts/sync-kubernetes-copies.py:
# edit alerts.yml, then run the script. The same rules, as a PrometheusRule for the
# Prometheus Operator (kube-prometheus-stack picks rules labelled with its release).
"""


def main() -> None:
    shutil.copyfile(
        ROOT / "deploy" / "grafana" / "dashboards" / "vllm-gateway.json",
        COMPONENTS / "grafana-dashboard" / "vllm-gateway.json",
    )
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "vllm-gateway",
            "labels": {
                "app.kubernetes.io/name": "vllm-gateway",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": rules["groups"]},
    }
    text = HEADER + yaml.safe_dump(rule, sort_keys=False, width=100)
    (COMPONENTS / "prometheus-rules" / "prometheusrule.yaml").write_text(text)


if __name__ == "__main__":
    main()
