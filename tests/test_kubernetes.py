"""deploy/kubernetes/: every overlay and component renders with the real `kubectl
kustomize`, validates against a current Kubernetes release's schemas in strict mode,
and says what the gateway needs: the ports and paths it serves, a pod that cannot
write outside its volumes, a drain that fits the grace period, network policies
that select the right pods, and secrets that are referenced, documented, never shipped.
The gateway itself running these settings is tests/test_kubernetes_gateway.py."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.cli.shutdown import SHUTDOWN_MARGIN_S
from gateway.probes import HEALTHZ, READYZ
from gateway.settings import Settings, load_settings
from tests.kube import (
    CRD_KINDS,
    GATEWAY_LABELS,
    KUBE_DIR,
    NAMESPACE,
    REDIS_LABELS,
    ROOT,
    SECRETS,
    UPSTREAM_LABEL,
    VARIANTS,
    config_for,
    container,
    every,
    expand_env,
    find,
    gateway_settings,
    matches,
    named_port,
    pod_labels,
    render,
    secret_key_refs,
    variant_dir,
)

KUBERNETES_VERSION = "1.37.0"
README = KUBE_DIR / "README.md"
Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    base = tmp_path_factory.mktemp("kustomize")
    return {variant: render(variant_dir(base, variant)) for variant in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_validates_strictly(
    rendered: dict[str, Objects], variant: str
) -> None:
    objects = rendered[variant]
    for obj in objects:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_strict_validation_refuses_a_misspelt_field(rendered: dict[str, Objects]) -> None:
    """The check above would catch a typo: strict mode refuses unknown fields."""
    deployment = copy.deepcopy(find(rendered["single"], "Deployment"))
    container(deployment, "gateway")["readinessProbe"]["httpGet"]["paht"] = READYZ
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_service_monitor_scrapes_the_admin_port(rendered: dict[str, Objects]) -> None:
    objects = rendered["ha-all-components"]
    monitor = find(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    admin = find(objects, "Service", "vllm-gateway-admin")
    assert matches(monitor["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"])
    assert not matches(
        monitor["spec"]["selector"]["matchLabels"],
        find(objects, "Service", "vllm-gateway")["metadata"]["labels"],
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in admin["spec"]["ports"]}
    assert set(monitor["spec"]) == {"jobLabel", "selector", "endpoints"}
    # The alert rules and the dashboard select job="vllm-gateway".
    assert admin["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "vllm-gateway"


def test_the_rules_component_ships_the_alert_rules(rendered: dict[str, Objects]) -> None:
    """The PrometheusRule holds exactly the groups of deploy/prometheus/alerts.yml (which
    promtool checks and unit-tests), and its jobs match the ServiceMonitor's."""
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = find(rendered["ha-all-components"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == shipped["groups"], (
        "run `python scripts/sync-kubernetes-copies.py`"
    )
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for each in group["rules"]:
            assert set(each) <= {"alert", "expr", "for", "labels", "annotations"}
            assert isinstance(each["expr"], str)
            assert isinstance(each["alert"], str)


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_services_use_the_ports_the_settings_listen_on(
    rendered: dict[str, Objects], variant: str
) -> None:
    objects = rendered[variant]
    deployment = find(objects, "Deployment", "vllm-gateway")
    gateway = container(deployment, "gateway")
    settings = gateway_settings(objects)
    assert named_port(gateway, "http") == settings["listen"]["port"]
    assert named_port(gateway, "admin") == settings["admin"]["listen"]["port"]
    assert settings["metrics"]["listener"] == "admin"
    for probe, path in (
        ("startupProbe", HEALTHZ),
        ("livenessProbe", HEALTHZ),
        ("readinessProbe", READYZ),
    ):
        get = gateway[probe]["httpGet"]
        assert get["path"] == path
        assert named_port(gateway, get["port"]) == settings["listen"]["port"]
    for name, port_name in (("vllm-gateway", "http"), ("vllm-gateway-admin", "admin")):
        service = find(objects, "Service", name)
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["selector"] == GATEWAY_LABELS
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == port_name


def test_in_gateway_tls_serves_the_probes_over_https(rendered: dict[str, Objects]) -> None:
    gateway = container(find(rendered["ha-all-components"], "Deployment"), "gateway")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"]["scheme"] == "HTTPS"
    env = {entry["name"]: entry.get("value") for entry in gateway["env"]}
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "tls")
    assert env["VGW_LISTEN__TLS__CERTFILE"] == f"{mount['mountPath']}/tls.crt"
    assert env["VGW_LISTEN__TLS__KEYFILE"] == f"{mount['mountPath']}/tls.key"


def _dockerfile_user() -> int:
    match = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_unprivileged_on_a_read_only_root(
    rendered: dict[str, Objects], variant: str
) -> None:
    objects = rendered[variant]
    for workload in every(objects, "Deployment") + every(objects, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not any("hostPath" in volume for volume in pod["volumes"])
        for item in pod["containers"]:
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert set(item["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(item["resources"]["requests"])
            assert "memory" in item["resources"]["limits"]
    deployment = find(objects, "Deployment", "vllm-gateway")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == (
        _dockerfile_user()
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_gateway_writes_only_to_volumes(rendered: dict[str, Objects], variant: str) -> None:
    """Temporary files (the multiprocess metrics directory with workers > 1) go to /tmp,
    an emptyDir; a SQLite store is on the PersistentVolumeClaim."""
    objects = rendered[variant]
    deployment = find(objects, "Deployment", "vllm-gateway")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {
        m["mountPath"]: volumes[m["name"]] for m in container(deployment, "gateway")["volumeMounts"]
    }
    assert "emptyDir" in mounts["/tmp"]
    store = gateway_settings(objects)["auth"]["key_store"]
    if store["backend"] == "sqlite":
        volume = mounts[str(Path(store["sqlite_path"]).parent)]
        claim = volume["persistentVolumeClaim"]["claimName"]
        find(objects, "PersistentVolumeClaim", claim)


def _pod_settings(objects: Objects, tmp_path: Path) -> Settings:
    """The ConfigMap's file plus the container's environment, secrets filled in as the
    kubelet would: the settings the pod starts with."""
    deployment = find(objects, "Deployment", "vllm-gateway")
    path = tmp_path / "gateway.yaml"
    path.write_text(config_for(objects, deployment)["data"]["gateway.yaml"])
    env = expand_env(container(deployment, "gateway")["env"], SECRETS)
    if "VGW_LISTEN__TLS__CERTFILE" in env:  # the files are checked at load: see the gateway test
        del env["VGW_LISTEN__TLS__CERTFILE"], env["VGW_LISTEN__TLS__KEYFILE"]
    return load_settings(path, env)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_settings_load_with_the_gateways_own_loader(
    rendered: dict[str, Objects], variant: str, tmp_path: Path
) -> None:
    objects = rendered[variant]
    deployment = find(objects, "Deployment", "vllm-gateway")
    settings = _pod_settings(objects, tmp_path)
    env = expand_env(container(deployment, "gateway")["env"], SECRETS)
    assert settings.auth.pepper is not None
    assert settings.auth.pepper.get_secret_value() == SECRETS["pepper"]
    assert [t.get_secret_value() for t in settings.admin.tokens] == [SECRETS["admin-token"]]
    assert env["VLLM_GATEWAY_ADMIN_TOKEN"] == SECRETS["admin-token"]
    assert env["VLLM_GATEWAY_URL"].endswith(f":{settings.admin.listen.port}")  # type: ignore[union-attr]
    (model,) = settings.models
    (replica,) = model.replicas
    assert replica.api_key is not None
    assert replica.api_key.get_secret_value() == SECRETS["vllm-api-key"]
    assert settings.workers == 1
    # A model whose vLLM is loading must not take every gateway pod out of the Service.
    assert settings.probes.ready_requires_models is False
    store = settings.auth.key_store
    if variant.startswith("single"):
        assert (store.backend, settings.limits.backend) == ("sqlite", "memory")
        return
    assert (store.backend, settings.limits.backend) == ("redis", "redis")
    assert store.redis_url is not None
    url = store.redis_url.get_secret_value()
    if variant == "ha-external-redis":
        assert url == SECRETS["redis-url"]
    else:
        service = find(objects, "Service", "vllm-gateway-redis")
        assert (
            url
            == f"redis://:{SECRETS['redis-password']}@{service['metadata']['name']}:"
            + str(service["spec"]["ports"][0]["port"])
            + "/0"
        )


def _prestop_sleep(gateway: dict[str, Any]) -> float:
    """Seconds a preStop hook holds SIGTERM back, if the container has one."""
    hook = gateway.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_drain_fits_the_grace_period(
    rendered: dict[str, Objects], variant: str, tmp_path: Path
) -> None:
    """From the deletion: a preStop hook (if any), then the gateway's own drain settings
    as the pod loads them, then its closing; all before the kubelet's SIGKILL."""
    objects = rendered[variant]
    deployment = find(objects, "Deployment", "vllm-gateway")
    pod = deployment["spec"]["template"]["spec"]
    drain = _pod_settings(objects, tmp_path).drain
    pre_stop = _prestop_sleep(container(deployment, "gateway")) + drain.pre_stop_delay
    assert pre_stop >= 5, "endpoints need a few seconds to drop the pod"
    assert drain.grace >= 30, "streams in flight need their time to finish"
    grace_period = pod["terminationGracePeriodSeconds"]
    assert pre_stop + drain.grace + SHUTDOWN_MARGIN_S <= grace_period
    readme = README.read_text()
    for number in (pre_stop, drain.grace, SHUTDOWN_MARGIN_S, grace_period):
        assert f"{number:g} s" in readme


def test_single_is_one_replica_recreated(rendered: dict[str, Objects]) -> None:
    deployment = find(rendered["single"], "Deployment", "vllm-gateway")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not every(rendered["single"], "HorizontalPodAutoscaler")


@pytest.mark.parametrize("variant", ["ha", "ha-external-redis"])
def test_ha_rolls_spreads_and_scales(rendered: dict[str, Objects], variant: str) -> None:
    objects = rendered[variant]
    deployment = find(objects, "Deployment", "vllm-gateway")
    labels = pod_labels(deployment)
    # The autoscaler owns the count: `kubectl apply` must not scale it back down.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    autoscaler = find(objects, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert autoscaler["spec"]["minReplicas"] == 3
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    budget = find(objects, "PodDisruptionBudget")
    assert matches(budget["spec"]["selector"]["matchLabels"], labels)
    assert budget["spec"]["maxUnavailable"] == 1
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {constraint["topologyKey"]: constraint for constraint in spread}
    assert keys["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "topology.kubernetes.io/zone" in keys
    assert all(matches(c["labelSelector"]["matchLabels"], labels) for c in spread)


def _policy(objects: Objects, name: str) -> dict[str, Any]:
    return find(objects, "NetworkPolicy", name)["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policies_select_the_right_pods_and_ports(
    rendered: dict[str, Objects], variant: str
) -> None:
    objects = rendered[variant]
    gateway_pods = pod_labels(find(objects, "Deployment", "vllm-gateway"))
    policy = _policy(objects, "vllm-gateway")
    assert matches(policy["podSelector"]["matchLabels"], gateway_pods)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    clients, prometheus = policy["ingress"]
    assert "from" not in clients and clients["ports"] == [{"port": "http", "protocol": "TCP"}]
    gateway = container(find(objects, "Deployment", "vllm-gateway"), "gateway")
    settings = gateway_settings(objects)
    assert named_port(gateway, "http") == settings["listen"]["port"]
    assert named_port(gateway, "admin") == settings["admin"]["listen"]["port"]
    (source,) = prometheus["from"]
    assert source["namespaceSelector"]["matchLabels"] and source["podSelector"]["matchLabels"]
    assert prometheus["ports"] == [{"port": "admin", "protocol": "TCP"}]
    dns, upstream = policy["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert upstream["to"][0]["podSelector"]["matchLabels"] == {UPSTREAM_LABEL: "true"}
    vllm = _policy(objects, "vllm-upstream")
    assert vllm["podSelector"]["matchLabels"] == {UPSTREAM_LABEL: "true"}
    assert not matches(vllm["podSelector"]["matchLabels"], gateway_pods)
    sources = [peer["podSelector"]["matchLabels"] for peer in vllm["ingress"][0]["from"]]
    assert sources == [GATEWAY_LABELS, {UPSTREAM_LABEL: "true"}]
    if variant.startswith("ha"):
        to_redis = _policy(objects, "vllm-gateway-to-redis")
        assert matches(to_redis["podSelector"]["matchLabels"], gateway_pods)
        ports = {p["port"] for rule in to_redis["egress"] for p in rule["ports"]}
        assert 6379 in ports


@pytest.mark.parametrize("variant", ["ha", "ha-all-components"])
def test_in_cluster_redis_is_reached_by_gateway_pods_only(
    rendered: dict[str, Objects], variant: str
) -> None:
    objects = rendered[variant]
    redis = find(objects, "StatefulSet", "vllm-gateway-redis")
    assert pod_labels(redis) == REDIS_LABELS
    policy = _policy(objects, "vllm-gateway-redis")
    assert matches(policy["podSelector"]["matchLabels"], pod_labels(redis))
    assert policy["egress"] == []
    (rule,) = policy["ingress"]
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [GATEWAY_LABELS]
    assert named_port(container(redis, "redis"), rule["ports"][0]["port"]) == 6379
    egress = _policy(objects, "vllm-gateway-to-redis")["egress"][0]
    assert egress["to"][0]["podSelector"]["matchLabels"] == REDIS_LABELS
    service = find(objects, "Service", "vllm-gateway-redis")
    assert service["spec"]["selector"] == REDIS_LABELS
    claim = redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container(redis, "redis")["volumeMounts"]}
    conf = config_for(objects, redis)["data"]["redis.conf"]
    assert re.search(r"^appendonly yes$", conf, re.MULTILINE)
    assert re.search(rf"^dir {mounts[claim]}$", conf, re.MULTILINE)


def test_external_redis_replaces_the_in_cluster_one(rendered: dict[str, Objects]) -> None:
    objects = rendered["ha-external-redis"]
    assert not every(objects, "StatefulSet")
    assert "vllm-gateway-redis" not in {o["metadata"]["name"] for o in objects}


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_is_shipped_and_every_key_is_documented(
    rendered: dict[str, Objects], variant: str
) -> None:
    objects = rendered[variant]
    assert not every(objects, "Secret")
    readme = README.read_text()
    example = (KUBE_DIR / "secrets.example").read_text()
    for name, key in secret_key_refs(objects):
        assert f"`{name}`" in readme
        assert f"`{key}`" in readme, f"Secret key {key} is not in {README.name}"
        assert re.search(rf"^#? ?{re.escape(key)}=$", example, re.MULTILINE), key
    for workload in every(objects, "Deployment") + every(objects, "StatefulSet"):
        for item in workload["spec"]["template"]["spec"]["containers"]:
            for entry in item.get("env", []):
                _assert_not_a_secret(entry)
        for volume in workload["spec"]["template"]["spec"]["volumes"]:
            if "secret" in volume:
                assert f"`{volume['secret']['secretName']}`" in readme
    for ingress in every(objects, "Ingress"):
        for tls in ingress["spec"]["tls"]:
            assert f"`{tls['secretName']}`" in readme


def _assert_not_a_secret(entry: dict[str, Any]) -> None:
    """A variable that carries a secret takes it from a Secret (`valueFrom`), or only
    places one inside a value as `$(NAME)`: never a value written in the manifest."""
    name, value = entry["name"], entry.get("value")
    if value is None:
        return
    placed = re.compile(r"^\$\([A-Z_]+\)$")
    if name == "VGW_MODELS":
        for model in yaml.safe_load(value):
            keys = [model.get("api_key")] + [r.get("api_key") for r in model["replicas"]]
            assert all(key is None or placed.match(key) for key in keys), keys
    elif name.endswith("REDIS_URL"):
        password = urlsplit(value).password
        assert password is None or placed.match(password), name
    elif name == "VGW_ADMIN__TOKENS":
        assert all(placed.match(token) for token in yaml.safe_load(value))
    elif re.search(r"PEPPER|TOKEN|PASSWORD|API_KEY", name):
        assert placed.match(value), name


def test_no_manifest_file_holds_a_secret() -> None:
    """Nothing under deploy/kubernetes/ is a Secret, rendered or not."""
    for path in KUBE_DIR.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", path


def test_the_dashboard_component_ships_the_dashboard(rendered: dict[str, Objects]) -> None:
    shipped = (ROOT / "deploy" / "grafana" / "dashboards" / "vllm-gateway.json").read_text()
    copy_path = KUBE_DIR / "components" / "grafana-dashboard" / "vllm-gateway.json"
    assert copy_path.read_text() == shipped, "run `python scripts/sync-kubernetes-copies.py`"
    config_map = find(rendered["single-all-components"], "ConfigMap", "vllm-gateway-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["vllm-gateway.json"]) == json.loads(shipped)


def test_the_ingress_sends_clients_to_the_client_port(rendered: dict[str, Objects]) -> None:
    objects = rendered["ha-all-components"]
    ingress = find(objects, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "vllm-gateway", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_the_upstream_label_and_prometheus_selector_are_documented() -> None:
    readme = README.read_text()
    assert f"{UPSTREAM_LABEL}=true" in readme or f'{UPSTREAM_LABEL}: "true"' in readme
    assert "kubernetes.io/metadata.name" in readme
    assert "deploy/kubernetes/README.md" in (ROOT / "docs" / "README.md").read_text()
