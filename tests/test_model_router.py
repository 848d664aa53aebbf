"""The model router on its own: which names it knows, the pool it chooses for a model
or an alias, the shedding refusal, the served-model header and the retargeted body.
tests/test_aliases.py shows the same end to end through a gateway and simulators.

The pools are real `Pool`s of real `Replica`s, put in each state the way the replica
monitor puts them: health checks that pass or fail, a failed request that ejects, a
discovery update that drains or adds a joining replica, and a `/metrics` scrape read
by `parse_load` for the waiting queue. The pool's clock is a fixed one, so every
reading is fresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from http import HTTPStatus

import orjson
import pytest

from gateway.errors import ModelBusy, ModelNotFound, ModelOverloaded, NoHealthyReplica
from gateway.proxy.aliases import SERVED_HEADER, ModelRouter, Shedding, retarget
from gateway.proxy.request_edit import EditedRequest
from gateway.upstreams.monitor import parse_load, served_models
from gateway.upstreams.pool import PickPolicy, Pool, Pools, Replica

NOW = 500.0
THRESHOLD = 4


def clock() -> float:
    return NOW


def pool(model: str, replicas: int = 2) -> Pool:
    urls = [f"http://{model}-{index}:8000" for index in range(replicas)]
    return Pool(model, [Replica(url) for url in urls], PickPolicy(clock=clock))


def world() -> Pools:
    """Three configured models, two replicas each, all unchecked (so usable) and idle."""
    return Pools([pool("a"), pool("b"), pool("c")])


def router(
    pools: Pools,
    aliases: dict[str, list[str]] | None = None,
    shedding: Shedding | None = None,
) -> ModelRouter:
    return ModelRouter(pools, aliases or {}, shedding or Shedding(waiting_above=THRESHOLD))


def scrape(replica: Replica, waiting: float) -> None:
    """What the monitor's load scrape does with a replica's `/metrics`."""
    text = f'vllm:num_requests_waiting{{engine="0"}} {waiting}\nvllm:num_requests_running 3\n'
    replica.load = parse_load(text.encode(), clock())


def queue(target: Pool, *waiting: float) -> None:
    for replica, depth in zip(target.replicas, waiting, strict=True):
        scrape(replica, depth)


def health_checks_fail(target: Pool) -> None:
    for replica in target.replicas:
        replica.check_failed(1, clock())


def ejected_and_draining(target: Pool) -> None:
    """One replica ejected for a failed request, the other gone from discovery while
    a request of its own finishes."""
    first, second = target.replicas
    assert target.request_failed(first, eject_after=1)
    with second.lease():
        target.update("static", [first.url], None)
    assert (first.state, second.state) == ("ejected", "draining")


def only_joining(target: Pool) -> None:
    """Its configured replicas fail their checks; discovery adds one that has not
    passed a check yet."""
    health_checks_fail(target)
    target.update("dns", ["http://joining:8000"], None)
    assert target.replicas[-1].state == "joining"


TAKEN_OUT = [health_checks_fail, ejected_and_draining, only_joining]


def test_shedding_is_off_by_default_and_answers_503_retry_after_2() -> None:
    shedding = Shedding()
    assert shedding.waiting_above is None
    assert shedding.status == 503
    assert shedding.retry_after == 2


def test_names_are_the_models_in_order_then_the_aliases_each_once() -> None:
    pools = world()
    # A LoRA adapter reported by a replica, with an alias of the same name.
    pools.get("b").replicas[0].models = served_models(b'{"data":[{"id":"adapter"}]}')
    routes = router(pools, {"fast": ["c", "a"], "adapter": ["a"], "slow": ["b"]})
    assert routes.names == ["a", "b", "c", "adapter", "fast", "slow"]
    assert router(world()).names == ["a", "b", "c"]


def test_is_alias_knows_only_the_aliases() -> None:
    routes = router(world(), {"fast": ["a"]})
    assert routes.is_alias("fast")
    assert not routes.is_alias("a")
    assert not routes.is_alias("nope")


def test_check_passes_a_model_an_adapter_and_an_alias_and_refuses_the_rest() -> None:
    pools = world()
    pools.get("a").replicas[0].models = frozenset({"adapter"})
    routes = router(pools, {"fast": ["a"]})
    routes.check("a")
    routes.check("adapter")
    routes.check("fast")
    with pytest.raises(ModelNotFound) as refused:
        routes.check("nope")
    assert refused.value.status == 404
    assert refused.value.message == "The model 'nope' does not exist."
    assert refused.value.param == "model"


def test_choose_a_model_gives_its_pool() -> None:
    pools = world()
    routes = router(pools, {"fast": ["b"]})
    assert routes.choose("a") is pools.get("a")
    assert routes.choose("c") is pools.get("c")
    with pytest.raises(ModelNotFound):
        routes.choose("nope")


def test_a_model_whose_every_replica_waits_above_the_threshold_is_refused_503() -> None:
    pools = world()
    queue(pools.get("a"), THRESHOLD + 1, 50)
    routes = router(pools, shedding=Shedding(waiting_above=THRESHOLD, retry_after=7))
    with pytest.raises(ModelOverloaded) as refused:
        routes.choose("a")
    assert refused.value.status == 503
    assert refused.value.code == "model_overloaded"
    assert refused.value.message == (
        f"Every replica of model 'a' has more than {THRESHOLD} requests waiting; try again shortly."
    )
    assert refused.value.headers == {"retry-after": "7"}
    assert routes.choose("b") is pools.get("b")


def test_the_default_refusal_is_503_with_retry_after_2() -> None:
    pools = world()
    queue(pools.get("a"), 9, 9)
    with pytest.raises(ModelOverloaded) as refused:
        router(pools, shedding=Shedding(waiting_above=THRESHOLD)).choose("a")
    assert refused.value.status == 503
    assert refused.value.headers == {"retry-after": "2"}


@pytest.mark.parametrize("status", [429, HTTPStatus.TOO_MANY_REQUESTS])
def test_shedding_with_status_429_refuses_with_model_busy(status: int) -> None:
    pools = world()
    queue(pools.get("a"), 9, 9)
    routes = router(pools, shedding=Shedding(waiting_above=8, status=status, retry_after=5))
    with pytest.raises(ModelBusy) as refused:
        routes.choose("a")
    assert refused.value.status == 429
    assert refused.value.message == (
        "Every replica of model 'a' has more than 8 requests waiting; try again shortly."
    )
    assert refused.value.headers == {"retry-after": "5"}


@pytest.mark.parametrize(
    ("waiting", "threshold"),
    [
        pytest.param((9, 2), THRESHOLD, id="one-replica-below"),
        pytest.param((2, 9), THRESHOLD, id="the-other-below"),
        pytest.param((THRESHOLD, THRESHOLD), THRESHOLD, id="exactly-at-the-threshold"),
        pytest.param((0, 0), 0, id="empty-queues-at-zero"),
    ],
)
def test_a_model_not_every_replica_of_which_waits_above_is_served(
    waiting: tuple[int, int], threshold: int
) -> None:
    pools = world()
    queue(pools.get("a"), *waiting)
    assert router(pools, shedding=Shedding(waiting_above=threshold)).choose("a") is pools.get("a")


def test_a_threshold_of_zero_sheds_any_waiting_request() -> None:
    pools = world()
    queue(pools.get("a"), 1, 1)
    with pytest.raises(ModelOverloaded) as refused:
        router(pools, shedding=Shedding(waiting_above=0)).choose("a")
    assert "has more than 0 requests waiting" in refused.value.message


def test_only_usable_replicas_count_for_shedding() -> None:
    pools = world()
    target = pools.get("a")
    queue(target, 0, 9)
    assert target.request_failed(target.replicas[0], eject_after=1)  # the idle one
    with pytest.raises(ModelOverloaded):
        router(pools).choose("a")


def test_without_a_threshold_nothing_is_shed() -> None:
    pools = world()
    queue(pools.get("a"), 1000, 1000)
    routes = router(pools, {"fast": ["a", "b"]}, Shedding(waiting_above=None))
    assert routes.choose("a") is pools.get("a")
    assert routes.choose("fast") is pools.get("a")


@pytest.mark.parametrize("take_out", TAKEN_OUT)
def test_a_model_without_a_usable_replica_still_gives_its_pool(
    take_out: Callable[[Pool], None],
) -> None:
    pools = world()
    target = pools.get("a")
    queue(target, 9, 9)
    take_out(target)
    assert router(pools).choose("a") is target
    with pytest.raises(NoHealthyReplica):
        target.pick()  # where the request is refused


@pytest.mark.parametrize(
    ("targets", "chosen"), [(["a", "b"], "a"), (["b", "a"], "b"), (["c", "b", "a"], "c")]
)
def test_an_alias_is_served_by_its_first_able_model(targets: list[str], chosen: str) -> None:
    pools = world()
    assert router(pools, {"fast": targets}).choose("fast") is pools.get(chosen)


@pytest.mark.parametrize("take_out", TAKEN_OUT)
def test_an_alias_skips_a_model_without_a_usable_replica(take_out: Callable[[Pool], None]) -> None:
    pools = world()
    take_out(pools.get("a"))
    routes = router(pools, {"fast": ["a", "b", "c"]})
    assert routes.choose("fast") is pools.get("b")


def test_an_alias_skips_a_model_that_sheds() -> None:
    pools = world()
    queue(pools.get("a"), 9, 9)
    queue(pools.get("b"), 9, 1)
    routes = router(pools, {"fast": ["a", "b", "c"]})
    assert routes.choose("fast") is pools.get("b")


def test_an_alias_skips_models_that_shed_or_are_down_until_one_can() -> None:
    pools = world()
    queue(pools.get("a"), 9, 9)
    health_checks_fail(pools.get("b"))
    routes = router(pools, {"fast": ["a", "b", "c"], "slow": ["b", "a", "c"]})
    assert routes.choose("fast") is pools.get("c")
    assert routes.choose("slow") is pools.get("c")


@pytest.mark.parametrize(
    "targets", [["a", "b"], ["b", "a"], ["a"]], ids=["shed-then-down", "down-then-shed", "one"]
)
def test_an_alias_none_of_whose_models_can_gets_the_shedding_refusal(targets: list[str]) -> None:
    pools = world()
    queue(pools.get("a"), 9, 9)
    health_checks_fail(pools.get("b"))
    routes = router(pools, {"fast": targets}, Shedding(waiting_above=THRESHOLD, retry_after=6))
    with pytest.raises(ModelOverloaded) as refused:
        routes.choose("fast")
    assert refused.value.status == 503
    assert refused.value.message == (
        f"Every replica of model 'fast' has more than {THRESHOLD} requests waiting; "
        "try again shortly."
    )
    assert refused.value.headers == {"retry-after": "6"}


def test_an_alias_of_models_that_all_shed_gets_the_429_when_so_configured() -> None:
    pools = world()
    queue(pools.get("a"), 9, 9)
    queue(pools.get("b"), 9, 9)
    shedding = Shedding(waiting_above=THRESHOLD, status=429, retry_after=3)
    with pytest.raises(ModelBusy) as refused:
        router(pools, {"fast": ["a", "b"]}, shedding).choose("fast")
    assert refused.value.status == 429
    assert "model 'fast'" in refused.value.message
    assert refused.value.headers == {"retry-after": "3"}


def test_an_alias_none_of_whose_models_has_a_usable_replica_gets_no_healthy_replica() -> None:
    pools = world()
    for model, take_out in zip("abc", TAKEN_OUT, strict=True):
        take_out(pools.get(model))
    with pytest.raises(NoHealthyReplica) as refused:
        router(pools, {"fast": ["a", "b", "c"]}).choose("fast")
    assert refused.value.status == 503
    assert refused.value.code == "no_healthy_replica"
    assert refused.value.message == "No healthy replica is serving model 'fast' right now."
    assert refused.value.headers == {"retry-after": "1"}


def test_a_model_back_after_its_checks_pass_serves_the_alias_again() -> None:
    pools = world()
    health_checks_fail(pools.get("a"))
    routes = router(pools, {"fast": ["a", "b"]})
    assert routes.choose("fast") is pools.get("b")
    assert pools.get("a").replicas[1].check_passed(1, clock())
    assert routes.choose("fast") is pools.get("a")


def test_the_served_header_is_named_x_gateway_model() -> None:
    assert SERVED_HEADER == b"x-gateway-model"


@pytest.mark.parametrize(
    ("model", "value"),
    [
        ("small-model", b"small-model"),
        # Printable ASCII goes as it is, even what `quote` would escape.
        ("org/model:v1 q4~", b"org/model:v1 q4~"),
        ("modèle", b"mod%C3%A8le"),
        ("a\tb", b"a%09b"),
        ("x\ny", b"x%0Ay"),
        ("\u00a0", b"%C2%A0"),
    ],
)
def test_the_served_header_percent_encodes_all_but_printable_ascii(
    model: str, value: bytes
) -> None:
    assert router(world()).served_header(model) == (b"x-gateway-model", value)


def test_the_served_header_is_built_once_per_model() -> None:
    routes = router(world())
    first = routes.served_header("modèle")
    assert routes.served_header("modèle") is first
    assert routes.served_header("a") == (SERVED_HEADER, b"a")
    assert routes.served_header("a") is routes.served_header("a")
    assert routes.served_header("modèle") is first


EDITED = EditedRequest(
    body=b'{"model":"fast","max_tokens":5}',
    strip_usage=True,
    prompt_estimate=11,
    completion_reserve=5,
    billed=False,
)


def test_retarget_keeps_a_request_that_named_the_served_model() -> None:
    payload = {"model": "a", "max_tokens": 5}
    assert retarget(EDITED, payload, "a") is EDITED
    assert payload == {"model": "a", "max_tokens": 5}


def test_retarget_compares_names_by_value_not_by_object() -> None:
    # The body's name comes from parsing the request, the served one from settings:
    # equal strings, two objects.
    payload = orjson.loads(b'{"model":"served-model-name","max_tokens":5}')
    served = "-".join(["served", "model", "name"])
    assert payload["model"] is not served
    assert retarget(EDITED, payload, served) is EDITED


def test_retarget_renames_whatever_the_names_order() -> None:
    for called, served in (("zeta", "alpha"), ("alpha", "zeta")):
        payload = {"model": called, "max_tokens": 5}
        edited = retarget(EDITED, payload, served)
        assert edited.body == orjson.dumps({"model": served, "max_tokens": 5})


def test_shedding_settings_cannot_change_once_made() -> None:
    with pytest.raises(FrozenInstanceError):
        Shedding().waiting_above = 3  # type: ignore[misc]


def test_retarget_puts_the_served_model_in_the_body() -> None:
    payload = {"model": "fast", "messages": [{"role": "user", "content": "é"}], "max_tokens": 5}
    edited = retarget(EDITED, payload, "small-model")
    assert payload["model"] == "small-model"
    assert edited.body == orjson.dumps(payload)
    assert edited.body == (
        b'{"model":"small-model","messages":[{"role":"user","content":"\xc3\xa9"}],"max_tokens":5}'
    )
    assert edited == EditedRequest(edited.body, True, 11, 5, billed=False)
    assert EDITED.body == b'{"model":"fast","max_tokens":5}'
