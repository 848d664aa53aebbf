"""The shipped dashboard and Prometheus config against real processes.

Two simulators serve `sim-model` behind a gateway, a real Prometheus scrapes
them with the shipped config, and the test sends traffic that makes every
panel of the Grafana dashboard meaningful: errors of every class, refusals,
auth failures, a replica that is down, a replica that fails, a client that
leaves, and a second gateway whose Redis limiter is unreachable. Then every
PromQL expression of the dashboard runs on that Prometheus, and the numbers it
shows are compared with what the test sent.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.keys.format import generate
from gateway.metrics import Metrics
from gateway.principal import Limits
from tests import promql
from tests.promql import Prometheus, PromQLError
from tests.servers import (
    TEST_PEPPER,
    Process,
    create_key,
    free_port,
    gateway_config,
    metric,
    run_gateway,
    run_simulator,
)

MODEL, SIDE, BROKEN, UNKNOWN = "sim-model", "side-model", "broken-model", "no-such-model"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
TENANTS = ("acme", "globex")
# Over 16 words: a full block of the simulators' prefix caches, found when resent.
MESSAGES = [
    {
        "role": "user",
        "content": "Tell me about the weather on the coast today, and whether the wind "
        "will keep the boats in the harbour until the evening tide comes in",
    }
]
ROUNDS = 2
# Far more than the socket buffers between a simulator and a client hold.
STALL_TOKENS = 200_000
# What Grafana sends for "All" on both variables, and for $__rate_interval with a
# short scrape interval.
ALL = {"model": ".*", "tenant": ".*", "__rate_interval": "1m"}


@dataclass
class Tally:
    """What one gateway answered, as its clients saw it."""

    instance: str
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, status)
    prompt: Counter[str] = field(default_factory=Counter)  # per tenant, MODEL only
    completion: Counter[str] = field(default_factory=Counter)

    def answered(self, route: str, status: int) -> None:
        self.statuses[route, str(status)] += 1

    def used(self, tenant: str, usage: dict[str, int]) -> None:
        self.prompt[tenant] += usage["prompt_tokens"]
        self.completion[tenant] += usage["completion_tokens"]

    def by_status(self) -> dict[tuple[str], float]:
        totals: Counter[tuple[str]] = Counter()
        for (_, status), count in self.statuses.items():
            totals[(status,)] += count
        return dict(totals)


@dataclass
class Stack:
    prometheus: Prometheus
    gateway: Process
    redis_gateway: Process
    sims: list[Process]
    main: Tally
    second: Tally


@dataclass
class Engines:
    """MODEL's simulators, and how many answers they gave through the gateways so far."""

    sims: list[Process]
    served: int = 0

    def settled(self) -> dict[str, float]:
        """The simulators' own counters (the engine's truth about tokens), added up, once
        every answer so far is in them: a simulator counts a sequence just after its
        last byte is sent."""
        deadline = time.monotonic() + 30
        while True:
            counts = {
                "prompt": sum(metric(s.url, "vllm:prompt_tokens_total") for s in self.sims),
                "generation": sum(metric(s.url, "vllm:generation_tokens_total") for s in self.sims),
                "finished": sum(metric(s.url, "vllm:request_success_total") for s in self.sims),
            }
            if counts["finished"] >= self.served:
                assert counts["finished"] == self.served
                return counts
            assert time.monotonic() < deadline, f"{counts} after {self.served} answers"
            time.sleep(0.02)


class Client:
    """One principal's requests to one gateway, each tallied."""

    def __init__(
        self, gateway: Process, key: str, tally: Tally, engines: Engines, *, tenant: str = ""
    ) -> None:
        self.http = httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        self.key = key
        self.tally = tally
        self.engines = engines
        self.tenant = tenant

    def post(self, route: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        response = self.http.post(route, json=body, headers=headers)
        self.tally.answered(route, response.status_code)
        if response.status_code == 200 and body["model"] == MODEL:
            self.engines.served += 1
            self.tally.used(self.tenant, response.json()["usage"])
        return response

    def stream(self, route: str, body: dict[str, Any]) -> None:
        """A streamed answer of MODEL read to its end; its usage is the answer's own
        usage event when asked for, else what the simulators counted for it."""
        before = self.engines.settled()
        with self.http.stream("POST", route, json={**body, "stream": True}) as response:
            self.tally.answered(route, response.status_code)
            assert response.status_code == 200, response.read()
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        self.engines.served += 1
        assert events[-1] == "[DONE]"
        usages = [json.loads(event).get("usage") for event in events[:-1]]
        usage = next((u for u in reversed(usages) if u), None)
        asked = body.get("stream_options", {}).get("include_usage", False)
        assert (usage is not None) == asked, "usage events go to the clients who ask for them"
        if usage is None:
            after = self.engines.settled()
            usage = {
                "prompt_tokens": int(after["prompt"] - before["prompt"]),
                "completion_tokens": int(after["generation"] - before["generation"]),
            }
        self.tally.used(self.tenant, usage)

    def leave_early(self, body: dict[str, Any]) -> None:
        """Start a slow stream, read one event, and hang up."""
        headers = {"x-sim-itl-ms": "100"}
        with self.http.stream("POST", CHAT, json={**body, "stream": True}, headers=headers) as r:
            self.tally.answered(CHAT, r.status_code)
            assert r.status_code == 200
            next(r.iter_lines())

    def stop_reading(self, body: dict[str, Any]) -> None:
        """Ask for a long, fast stream, never read it, and hang up once the gateway has
        given up on this client (after `timeouts.client_write`)."""
        gateway = str(self.http.base_url).rstrip("/")
        stalls = metric(gateway, "gateway_client_stalls_total")
        payload = json.dumps({**body, "stream": True})
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((self.http.base_url.host, self.http.base_url.port or 80))
            sock.sendall((head + payload).encode())
            deadline = time.monotonic() + 60
            while metric(gateway, "gateway_client_stalls_total") == stalls:
                assert time.monotonic() < deadline, "the gateway kept writing to a stalled client"
                time.sleep(0.2)
        self.tally.answered(CHAT, 200)

    def close(self) -> None:
        self.http.close()


def chat_body(model: str = MODEL, **fields: object) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": 8, **fields}


def completion_body(**fields: object) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6, **fields}


def send_round(clients: dict[str, Client]) -> None:
    """Every kind of request the dashboard shows, once; statuses that depend on
    timing (a refusal's window, a replica's health) are tallied as answered."""
    acme, globex = clients["acme"], clients["globex"]
    assert acme.post(CHAT, chat_body()).status_code == 200
    assert globex.post(CHAT, chat_body()).status_code == 200
    acme.stream(CHAT, chat_body(stream_options={"include_usage": True}))
    globex.stream(CHAT, chat_body())
    assert acme.post(COMPLETIONS, completion_body()).status_code == 200
    globex.stream(COMPLETIONS, completion_body())
    assert acme.post(CHAT, chat_body(UNKNOWN)).status_code == 404
    assert clients["malformed"].post(CHAT, chat_body()).status_code == 401
    assert clients["unknown"].post(CHAT, chat_body()).status_code == 401
    # One request a minute: the second of a round is always refused.
    limited = [clients["limited"].post(CHAT, chat_body()).status_code for _ in range(2)]
    assert limited[1] == 429 and limited[0] in (200, 429)
    # The replica's own 500 reaches the client: it was answered, not lost.
    failed = acme.post(CHAT, chat_body(SIDE), **{"x-sim-fail-status": "500"})
    assert failed.status_code == 500
    down = acme.post(CHAT, chat_body(BROKEN)).status_code
    assert down in (502, 503)
    acme.leave_early(chat_body(SIDE, max_tokens=50))
    acme.stop_reading(chat_body(SIDE, max_tokens=STALL_TOKENS))
    # Admitted without limits: the limiter's Redis is unreachable and the policy is open.
    assert clients["redis"].post(CHAT, chat_body()).status_code == 200


def wait_until_idle(gateway: Process) -> None:
    """Until the gateway has recorded every request (the in-flight gauge is lowered in
    the same step as the request's metrics are written)."""
    deadline = time.monotonic() + 30
    while metric(gateway.url, "gateway_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "requests still in flight"
        time.sleep(0.05)


def wait_for_query(prometheus: Prometheus, expr: str) -> None:
    deadline = time.monotonic() + 60
    while not prometheus.query(expr):
        assert time.monotonic() < deadline, f"{expr} never had data"
        time.sleep(0.2)


def keyed_config(tmp_path: Path, port: int, models: dict[str, list[str]]) -> dict[str, object]:
    """A gateway config whose keys the test creates itself."""
    config = gateway_config(port, models)
    store = tmp_path / f"keys-{port}.db"
    config["auth"] = {"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(store)}}
    return config


def main_config(tmp_path: Path, sims: list[Process]) -> tuple[dict[str, object], dict[str, str]]:
    """MODEL on two simulators, SIDE on the third, BROKEN on a port nobody listens on;
    keys for two tenants and for one allowed a request a minute."""
    dead = f"http://127.0.0.1:{free_port()}"
    pools = {MODEL: [sims[0].url, sims[1].url], SIDE: [sims[2].url], BROKEN: [dead]}
    config = keyed_config(tmp_path, free_port(), pools)
    # Health checks every second: the dead replica is down within seconds.
    config["upstreams"] = {"health": {"interval": 1.0}}
    # A client that stops reading is given up on after a second.
    config["timeouts"] = {"client_write": 1.0}
    keys = {tenant: create_key(config, tenant=tenant) for tenant in TENANTS}
    one_a_minute = Limits(requests_per_minute=1)
    keys["limited"] = create_key(config, tenant="limited", limits=one_a_minute)
    return config, keys


def redis_config(tmp_path: Path, sim: Process) -> tuple[dict[str, object], str]:
    """A gateway whose limits live in a Redis that is not there (fail-open), and which
    keeps each conversation on one replica."""
    config = keyed_config(tmp_path, free_port(), {MODEL: [sim.url]})
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    config["limits"] = {"backend": "redis", "redis_url": redis_url, "on_backend_error": "open"}
    config["upstreams"] = {"affinity": {"by": "conversation"}}
    key = create_key(config, tenant="acme", limits=Limits(requests_per_minute=1000))
    return config, key


@contextmanager
def clients_of(stack: Stack, keys: dict[str, str], redis_key: str) -> Iterator[dict[str, Client]]:
    engines = Engines(stack.sims[:2])
    gateway = stack.gateway
    clients = {
        tenant: Client(gateway, key, stack.main, engines, tenant=tenant)
        for tenant, key in keys.items()
    }
    clients["malformed"] = Client(gateway, "not-a-key", stack.main, engines)
    clients["unknown"] = Client(gateway, generate().token, stack.main, engines)
    second = stack.redis_gateway
    clients["redis"] = Client(second, redis_key, stack.second, engines, tenant="acme")
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()


def send_traffic(stack: Stack, keys: dict[str, str], redis_key: str) -> None:
    prometheus = stack.prometheus
    # Every target scraped once before any traffic: each counter's first sample is its
    # start, so a rate over the whole run is the run's own ratio.
    prometheus.wait_for_scrapes(after=time.time())
    with clients_of(stack, keys, redis_key) as clients:
        # Twice, with scrapes between: a rate needs a series seen before it grew.
        for _ in range(ROUNDS):
            send_round(clients)
            for gateway in (stack.gateway, stack.redis_gateway):
                wait_until_idle(gateway)
            clients["acme"].engines.settled()
            prometheus.wait_for_scrapes(after=time.time())
    wait_for_query(prometheus, f'gateway_replica_up{{model="{BROKEN}"}} == 0')
    prometheus.at = time.time()


@pytest.fixture(scope="module")
def stack(module_tmp: Path) -> Iterator[Stack]:
    with (
        run_simulator(module_tmp) as sim1,
        run_simulator(module_tmp) as sim2,
        run_simulator(module_tmp, "--max-model-len", str(2 * STALL_TOKENS), model=SIDE) as sim3,
    ):
        sims = [sim1, sim2, sim3]
        config, keys = main_config(module_tmp, sims)
        second, redis_key = redis_config(module_tmp, sim1)
        with (
            run_gateway(module_tmp, config) as gateway,
            run_gateway(module_tmp, second) as redis_gateway,
        ):
            instances = [f"127.0.0.1:{gateway.port}", f"127.0.0.1:{redis_gateway.port}"]
            jobs = {"vllm-gateway": instances, "vllm": [f"127.0.0.1:{sim.port}" for sim in sims]}
            with promql.run_prometheus(module_tmp, promql.scrape_config(jobs)) as prometheus:
                main, other = Tally(instances[0]), Tally(instances[1])
                stack = Stack(prometheus, gateway, redis_gateway, sims, main, other)
                send_traffic(stack, keys, redis_key)
                yield stack


def panel_values(stack: Stack, title: str, *by: str) -> list[dict[tuple[str, ...], float]]:
    """What the dashboard's panel TITLE shows with "All" selected, one dict per query."""
    targets = [t for t in promql.targets(promql.load_dashboard()) if t.panel == title]
    assert targets, title
    return [stack.prometheus.values(promql.interpolate(t.expr, ALL), *by) for t in targets]


def test_the_dashboard_is_provisionable() -> None:
    dashboard = promql.load_dashboard()
    assert dashboard["uid"] == "vllm-gateway"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "tenant"):
        variable = variables[name]
        assert variable["definition"] == f"label_values(gateway_requests_total, {name})"
        assert variable["query"] == variable["definition"]
        assert (variable["multi"], variable["includeAll"], variable["allValue"]) == (
            True,
            True,
            ".*",
        )
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    panels = list(promql.panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    # Grafana moves overlapping panels around: every grid cell holds one panel at most.
    cells: Counter[tuple[int, int]] = Counter()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            cells.update((x, y) for y in range(grid["y"], grid["y"] + grid["h"]))
    assert [cell for cell, panels_there in cells.items() if panels_there > 1] == []
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_every_gateway_metric_is_on_the_dashboard() -> None:
    exprs = " ".join(target.expr for target in promql.targets(promql.load_dashboard()))
    names = {family.name for family in Metrics().registry.collect()}
    assert len(names) > 15
    missing = sorted(name for name in names if name not in exprs)
    assert missing == []
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f'vllm:{name}{{model_name=~"$model"}}' in exprs


def test_the_shipped_prometheus_config_is_valid() -> None:
    binary = Path(promql.prometheus_binary()).with_name("promtool")
    checked = subprocess.run(
        [str(binary), "check", "config", str(promql.PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_target_is_scraped(stack: Stack) -> None:
    up = stack.prometheus.values("up", "job", "instance")
    assert len(up) == 5
    assert set(up.values()) == {1.0}
    assert {job for job, _ in up} == {"vllm-gateway", "vllm"}


def test_the_alert_rules_load_and_evaluate(stack: Stack) -> None:
    shipped = yaml.safe_load(promql.ALERT_RULES.read_text())
    names = {rule["alert"] for group in shipped["groups"] for rule in group["rules"]}
    deadline = time.monotonic() + 30
    rules = stack.prometheus.rules()
    while any(rule["health"] == "unknown" for rule in rules):
        assert time.monotonic() < deadline, "rules not evaluated"
        time.sleep(0.5)
        rules = stack.prometheus.rules()
    assert {rule["name"] for rule in rules} == names
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    # The broken model's replicas are down on the main gateway: pending, or firing by now.
    (no_replica,) = [rule for rule in rules if rule["name"] == "ModelHasNoReplicaUp"]
    assert {alert["labels"]["model"] for alert in no_replica["alerts"]} == {BROKEN}


def variable_values(stack: Stack, name: str) -> list[str]:
    """The values the dashboard's variable NAME offers."""
    variables = {v["name"]: v for v in promql.load_dashboard()["templating"]["list"]}
    return stack.prometheus.variable_values(variables[name]["definition"])


def test_the_variables_list_models_and_tenants(stack: Stack) -> None:
    models = variable_values(stack, "model")
    assert set(models) == {MODEL, SIDE, BROKEN}  # a model nobody serves is no label value
    assert set(variable_values(stack, "tenant")) == {*TENANTS, "limited"}


@pytest.mark.parametrize("selection", ["all", "every value"])
def test_every_panel_query_has_data(stack: Stack, selection: str) -> None:
    prometheus = stack.prometheus
    variables = dict(ALL)
    if selection == "every value":
        for name in ("model", "tenant"):
            variables[name] = promql.grafana_regex(variable_values(stack, name))
    targets = promql.targets(promql.load_dashboard())
    assert len(targets) >= 40
    failed = []
    for target in targets:
        expr = promql.interpolate(target.expr, variables)
        try:
            result = prometheus.query(expr)
        except PromQLError as exc:
            failed.append(f"{target.panel} {target.ref_id}: {exc}")
            continue
        if not promql.has_number(result):
            failed.append(f"{target.panel} {target.ref_id}: no data: {expr} -> {result}")
    assert failed == []


def test_request_counts_are_what_was_sent(stack: Stack) -> None:
    prometheus = stack.prometheus
    for tally in (stack.main, stack.second):
        selector = f'gateway_requests_total{{instance="{tally.instance}"}}'
        assert prometheus.values(f"sum by (status) ({selector})", "status") == tally.by_status()
        by_route = prometheus.values(f"sum by (route, status) ({selector})", "route", "status")
        assert by_route == dict(tally.statuses)
    [by_status] = panel_values(stack, "Requests/s by status", "status")
    sent = {status for tally in (stack.main, stack.second) for _, status in tally.statuses}
    assert {status for (status,) in by_status} == sent
    assert {"200", "401", "404", "429", "500"} <= sent


def test_affinity_picks_are_the_conversations_sent(stack: Stack) -> None:
    """The second gateway keeps conversations home: its one chat a round is a first
    choice each time; the main gateway, without affinity, counts none."""
    picks = "sum by (instance, pick) (gateway_affinity_picks_total)"
    shown = stack.prometheus.values(picks, "instance", "pick")
    assert shown == {(stack.second.instance, "first"): ROUNDS}
    (panel,) = panel_values(stack, "Conversation affinity picks/s", "model", "pick")
    assert set(panel) == {(MODEL, "first")} and panel[MODEL, "first"] > 0


def test_the_prefix_cache_panel_shows_each_replicas_hit_share(stack: Stack) -> None:
    """Every round resends the same chat to each replica, which finds it cached after
    its first time: over a window as long as the run, the panel shows every replica
    with a share above 0 (Prometheus extrapolates each series' rate on its own, so the
    share is near, not equal to, the replicas' own hits / queries)."""
    (target,) = [
        t for t in promql.targets(promql.load_dashboard()) if t.panel == "Prefix cache hit rate"
    ]
    whole_run = {**ALL, "__rate_interval": "15m"}
    shown = stack.prometheus.values(
        promql.interpolate(target.expr, whole_run), "model_name", "instance"
    )
    models = [MODEL, MODEL, SIDE]
    replicas = {(m, f"127.0.0.1:{sim.port}") for m, sim in zip(models, stack.sims, strict=True)}
    assert set(shown) == replicas
    for replica, share in shown.items():
        sim = stack.sims[[f"127.0.0.1:{s.port}" for s in stack.sims].index(replica[1])]
        assert metric(sim.url, "vllm:prefix_cache_hits_total") > 0
        assert 0 < share <= 1, shown


def test_tokens_are_the_replicas_usage(stack: Stack) -> None:
    prometheus = stack.prometheus
    for tally in (stack.main, stack.second):
        where = f'{{instance="{tally.instance}", model="{MODEL}"}}'
        prompt = prometheus.values(
            f"sum by (tenant) (gateway_prompt_tokens_total{where})", "tenant"
        )
        completion = prometheus.values(
            f"sum by (tenant) (gateway_completion_tokens_total{where})", "tenant"
        )
        assert prompt == {(tenant,): float(n) for tenant, n in tally.prompt.items()}
        assert completion == {(tenant,): float(n) for tenant, n in tally.completion.items()}
        assert all(n > 0 for n in (*tally.prompt.values(), *tally.completion.values()))
    # The gateways' view and the engines' agree: every token of MODEL went through one.
    for gateway, engine in (("prompt", "prompt"), ("completion", "generation")):
        through = prometheus.query(f'sum(gateway_{gateway}_tokens_total{{model="{MODEL}"}})')
        served = prometheus.query(f'sum(vllm:{engine}_tokens_total{{model_name="{MODEL}"}})')
        assert float(through[0]["value"][1]) == float(served[0]["value"][1])


def test_gauges_after_the_traffic(stack: Stack) -> None:
    prometheus = stack.prometheus
    instance = stack.main.instance
    up = prometheus.values(f'gateway_replica_up{{instance="{instance}"}}', "model", "replica")
    assert sorted((model, value) for (model, _), value in up.items()) == [
        (BROKEN, 0.0),
        (SIDE, 1.0),
        (MODEL, 1.0),
        (MODEL, 1.0),
    ]
    assert {replica for (_, replica) in up} >= {sim.url for sim in stack.sims}
    # The overview counts each replica once, however many gateways report it.
    assert panel_values(stack, "Replicas up") == [{(): 3.0}, {(): 4.0}]
    # Every request and stream ended, the abandoned one included.
    for gauge in ("gateway_requests_in_flight", "gateway_open_streams"):
        assert prometheus.values(f"sum({gauge})") == {(): 0.0}
    disconnects = prometheus.values("sum by (model) (gateway_client_disconnects_total)", "model")
    assert disconnects == {(SIDE,): float(ROUNDS)}
    refusals = prometheus.values("sum by (kind, scope) (gateway_rate_limit_refusals_total)")
    assert sum(refusals.values()) == stack.main.statuses[CHAT, "429"]
    failures = prometheus.values("sum(gateway_auth_failures_total)")
    assert failures == {(): 2.0 * ROUNDS}
    backend = prometheus.values(
        f'sum(gateway_limiter_backend_errors_total{{instance="{stack.second.instance}"}})'
    )
    assert backend[()] > 0


def test_upstream_requests_match_the_answers(stack: Stack) -> None:
    prometheus = stack.prometheus
    instance = stack.main.instance
    outcomes = prometheus.values(
        f'sum by (model, outcome) (gateway_upstream_requests_total{{instance="{instance}"}})',
        "model",
        "outcome",
    )
    answered = sum(
        count
        for (route, status), count in stack.main.statuses.items()
        if status == "200" and route in (CHAT, COMPLETIONS)
    )
    # Every 200 of MODEL came from one try at a sim; SIDE: the abandoned streams, and the
    # ones whose client stopped reading, were the replica's success.
    assert outcomes[MODEL, "ok"] + outcomes[SIDE, "ok"] == answered
    assert outcomes[SIDE, "ok"] == 2 * ROUNDS
    assert outcomes[SIDE, "error"] == ROUNDS
    errors = prometheus.values(
        f'sum by (model, kind) (gateway_upstream_errors_total{{instance="{instance}"}})',
        "model",
        "kind",
    )
    assert errors[SIDE, "status"] == ROUNDS
