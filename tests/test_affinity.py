"""Affinity keys (gateway.proxy.affinity) and the keyed pick (gateway.upstreams.pool):
which conversation a request belongs to, and which replica serves it."""

from __future__ import annotations

import collections
import math
import random
from typing import Any

import pytest

from gateway.errors import NoHealthyReplica
from gateway.proxy.affinity import Affinity, _text
from gateway.proxy.routes import Route
from gateway.proxy.setup import proxy_options
from gateway.settings import load_settings
from gateway.upstreams.pool import PickPolicy, Pool, Replica, _weight
from gateway.upstreams.setup import pools_from_settings

SYSTEM = {"role": "system", "content": "You are terse."}
FIRST = {"role": "user", "content": "What is a KV cache?"}
ANSWER = {"role": "assistant", "content": "Attention keys and values kept for reuse."}
SECOND = {"role": "user", "content": "And prefix caching?"}


def key(payload: dict[str, Any], route: Route = Route.CHAT, **options: Any) -> int | None:
    headers = options.pop("headers", [])
    tenant = options.pop("tenant", "team-a")
    return Affinity(options.pop("prefix_chars", 4096), **options).key(
        route, payload, headers, tenant
    )


def test_every_turn_of_a_chat_has_the_key_of_its_opening() -> None:
    turns = [
        [SYSTEM, FIRST],
        [SYSTEM, FIRST, ANSWER, SECOND],
        [SYSTEM, FIRST, ANSWER, SECOND, ANSWER, {"role": "user", "content": "Thanks"}],
    ]
    keys = {
        key({"model": "m", "messages": messages, "max_tokens": n})
        for n, messages in enumerate(turns)
    }
    assert len(keys) == 1 and None not in keys


def test_conversations_with_another_opening_or_tenant_have_other_keys() -> None:
    base = key({"messages": [SYSTEM, FIRST]})
    others = [
        key({"messages": [SYSTEM, {"role": "user", "content": "What is a KV cache!"}]}),
        key({"messages": [{"role": "system", "content": "You are verbose."}, FIRST]}),
        key({"messages": [FIRST]}),
        key({"messages": [SYSTEM, FIRST]}, tenant="team-b"),
        key({"messages": [SYSTEM, FIRST]}, tenant=None),
    ]
    assert base not in others
    assert len(set(others)) == len(others)


def test_the_other_apis_read_their_own_opening() -> None:
    messages = key({"system": "Be terse.", "messages": [FIRST]}, Route.MESSAGES)
    assert messages != key({"system": "Be terse.", "messages": [SECOND]}, Route.MESSAGES)
    later = key({"system": "Be terse.", "messages": [FIRST, ANSWER, SECOND]}, Route.MESSAGES)
    assert messages == later is not None
    assert key({"system": "Be brief.", "messages": [FIRST]}, Route.MESSAGES) != messages

    responses = key({"instructions": "Be terse.", "input": [FIRST]}, Route.RESPONSES)
    turn = key({"instructions": "Be terse.", "input": [FIRST, ANSWER, SECOND]}, Route.RESPONSES)
    assert responses == turn is not None
    plain = key({"input": "What is a KV cache?"}, Route.RESPONSES)
    assert plain is not None and plain != responses

    prompt = key({"prompt": "Once upon a time"}, Route.COMPLETIONS)
    assert prompt == key({"prompt": "Once upon a time", "max_tokens": 9}, Route.COMPLETIONS)
    assert prompt != key({"prompt": "Once upon a tide"}, Route.COMPLETIONS)
    assert key({"prompt": [1, 2, 3]}, Route.COMPLETIONS) != key(
        {"prompt": [1, 2]}, Route.COMPLETIONS
    )


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        (Route.EMBEDDINGS, {"input": "embed me"}),
        (Route.COUNT_TOKENS, {"messages": [FIRST]}),
        (Route.RERANK, {"query": "q", "documents": ["d"]}),
        (Route.CHAT, {}),
        (Route.CHAT, {"messages": []}),
        (Route.CHAT, {"messages": "What is a KV cache?"}),
        (Route.CHAT, {"messages": {"role": "user"}}),
        (Route.CHAT, {"messages": None}),
        (Route.CHAT, {"messages": 7}),
        (Route.MESSAGES, {"system": "s", "messages": []}),
        (Route.MESSAGES, {"system": "s", "messages": "hello"}),
        (Route.RESPONSES, {"input": []}),
        (Route.RESPONSES, {"input": 3}),
        (Route.RESPONSES, {"instructions": "only"}),
        (Route.COMPLETIONS, {}),
        (Route.COMPLETIONS, {"prompt": None}),
    ],
)
def test_requests_without_an_opening_have_no_key(route: Route, payload: dict[str, Any]) -> None:
    assert key(payload, route) is None


def test_odd_messages_still_make_a_key_without_failing() -> None:
    """Whatever the contract let through: items that are not objects, no user role."""
    odd = [
        [1, "two", None, True, 2.5],
        [{"role": "assistant", "content": "no user here"}],
        [{"role": ["user"], "content": {"deep": [1, {"x": None}]}}],
        [{"role": "user", "content": "\ud800 lone surrogate"}],
        [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
    ]
    keys = [key({"messages": messages}) for messages in odd]
    assert None not in keys and len(set(keys)) == len(keys)


def test_a_long_shared_system_prompt_still_leaves_conversations_apart() -> None:
    """The whole opening makes the key: a system prompt far past `prefix_chars`,
    shared by every conversation, does not make them one."""
    system = {"role": "system", "content": "Rule. " * 5000}
    keys = {
        key({"messages": [system, {"role": "user", "content": f"Question {n}"}]}, prefix_chars=64)
        for n in range(50)
    }
    assert len(keys) == 50
    later = [system, {"role": "user", "content": "Question 7"}, ANSWER, SECOND]
    assert key({"messages": later}, prefix_chars=64) in keys


def test_a_prompt_or_session_header_is_cut_at_prefix_chars() -> None:
    """A completions prompt grows with each turn: its first `prefix_chars` make its key."""
    long = "x" * 100
    first = key({"prompt": long + "A"}, Route.COMPLETIONS, prefix_chars=64)
    assert first == key({"prompt": long + "B"}, Route.COMPLETIONS, prefix_chars=64)
    wider = [key({"prompt": long + end}, Route.COMPLETIONS, prefix_chars=4096) for end in "AB"]
    assert wider[0] != wider[1]
    assert len(_text([{"role": "user", "content": long}], 64)) == 64
    session = [(b"x-session-id", b"s" * 100 + b"A")]
    other = [(b"x-session-id", b"s" * 100 + b"B")]
    cut = {"header": "x-session-id", "prefix_chars": 64}
    assert key({}, headers=session, **cut) == key({}, headers=other, **cut)


def test_reading_a_deep_or_wide_opening_stops_at_prefix_chars() -> None:
    deep: Any = "bottom"
    for _ in range(200_000):  # far past the interpreter's recursion limit
        deep = [deep]
    wide = {f"k{i}": i for i in range(200_000)}
    assert len(_text(deep, 4096)) == 4096
    assert len(_text(wide, 4096)) == 4096
    assert key({"messages": [{"role": "user", "content": deep}]}) is not None
    assert key({"messages": [{"role": "user", "content": wide}]}) is not None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ([["a"], "b"], [["a", "b"]]),
        (['a"b'], ["a", "b"]),
        (["ab"], ["a", "b"]),
        ({"a": "b"}, ["a", "b"]),
        ({"a": "b:c"}, {"a:b": "c"}),
        ([1], ["1"]),
        ([None], ["None"]),
        ([True], [1]),
        ([], {}),
    ],
)
def test_different_openings_never_read_alike(one: object, other: object) -> None:
    assert _text(one, 4096) != _text(other, 4096)


def test_keys_stay_the_same_from_release_to_release() -> None:
    """During a rolling upgrade old and new gateways serve side by side: a key that
    changed would move every conversation to another replica. These values are the
    contract; change them only knowingly, and say so in the changelog."""
    assert _text({"a": [1, "b", None, True, {}]}, 100) == "{1:a[11'bNoneTrue{}]}"
    assert key({"messages": [SYSTEM, FIRST]}) == 14374722201308123637
    session = [(b"x-session-id", b"sess-42")]
    assert key({}, header="x-session-id", headers=session) == 15581351505817947431
    assert key({"prompt": "Once upon a time"}, Route.COMPLETIONS) == 2750897671473034379
    deep: Any = "x"
    for _ in range(300):  # past orjson's depth: read by the bounded walk
        deep = [deep]
    assert key({"messages": [{"role": "user", "content": deep}]}) == 17821540269601281196


def test_a_session_header_names_the_conversation() -> None:
    others = [(b"authorization", b"Bearer k"), (b"x-trace", b"t1"), (b"content-type", b"json")]
    session = [others[0], (b"X-Session-Id", b"sess-42"), *others[1:]]
    one = key({"messages": [FIRST]}, header="x-session-id", headers=session)
    other = key({"messages": [SECOND]}, header="x-session-id", headers=session)
    assert one == other is not None
    assert one != key({"messages": [FIRST]}, header="x-session-id")
    assert one != key({"messages": [FIRST]}, header="x-session-id", headers=session, tenant="b")
    # No header, an empty one or two of them: the opening decides, as without the setting.
    opening = key({"messages": [FIRST]})
    for headers in ([], [(b"x-session-id", b"  ")], [*session, (b"x-session-id", b"sess-43")]):
        assert key({"messages": [FIRST]}, header="x-session-id", headers=headers) == opening
    # On a route with no opening the header still names the conversation.
    assert key({"input": "e"}, Route.EMBEDDINGS, header="x-session-id", headers=session) == one


def test_the_settings_turn_affinity_on_with_their_header_and_bound() -> None:
    off = load_settings(None, {})
    assert off.upstreams.affinity.by == "none" and proxy_options(off).affinity is None
    env = {
        "VGW_UPSTREAMS__AFFINITY__BY": "conversation",
        "VGW_UPSTREAMS__AFFINITY__HEADER": "X-Session-Id",
        "VGW_UPSTREAMS__AFFINITY__PREFIX_CHARS": "32",
        "VGW_UPSTREAMS__AFFINITY__MAX_LOAD": "2",
        "VGW_MODELS": '[{"name": "m", "replicas": [{"url": "10.0.0.5:8000"}]}]',
        "VGW_AUTH__PEPPER": "p" * 40,
    }
    settings = load_settings(None, env)
    assert settings.upstreams.affinity.header == "x-session-id"
    affinity = proxy_options(settings).affinity
    assert affinity is not None
    headers = [(b"x-session-id", b"s" * 32 + b"A")]
    assert affinity.key(Route.CHAT, {}, headers, "t") == affinity.key(
        Route.CHAT, {}, [(b"x-session-id", b"s" * 32 + b"B")], "t"
    )
    assert pools_from_settings(settings).get("m").policy.max_load == 2


def replicas(count: int) -> list[Replica]:
    return [Replica(f"http://10.0.0.{i}:8000", healthy=True) for i in range(count)]


def pool_of(members: list[Replica], max_load: float = 1.5) -> Pool:
    return Pool("m", members, PickPolicy(max_load=max_load))


def test_rankings_stay_the_same_from_release_to_release() -> None:
    """Old and new gateways side by side (a rolling upgrade) must rank the replicas of
    a conversation alike, or its turns would alternate between two replicas."""
    members = replicas(4)
    assert members[0].salt == 14595987661419709512
    assert _weight(1, 0) == 6238072747940578789
    assert _weight((1 << 64) - 1, 0) == 13029008266876403067
    assert _weight(3939811093367356342, members[0].salt) == 18330968341108465822
    urls = [r.url for r in pool_of(members).ranking(3939811093367356342)]
    assert urls == [members[i].url for i in (0, 1, 3, 2)]
    urls = [r.url for r in pool_of(members).ranking(15581351505817947431)]
    assert urls == [members[i].url for i in (0, 2, 3, 1)]


def test_keys_spread_evenly_and_every_gateway_ranks_alike() -> None:
    pool = pool_of(replicas(4))
    twin = pool_of(replicas(4))  # another gateway process: other objects, same URLs
    picks = collections.Counter()
    for n in range(8000):
        k = key({"prompt": f"conversation {n}"}, Route.COMPLETIONS)
        assert k is not None
        chosen = pool.pick_for(k)[0]
        assert twin.pick_for(k)[0].url == chosen.url
        picks[chosen.url] += 1
    assert len(picks) == 4
    assert all(1700 < count < 2300 for count in picks.values()), picks


def test_a_replica_leaving_or_joining_moves_only_its_own_keys() -> None:
    members = replicas(5)
    keys = [random.Random(n).getrandbits(64) for n in range(3000)]
    before = {k: pool_of(members).pick_for(k)[0] for k in keys}
    gone = members[2]
    after = {k: pool_of([r for r in members if r is not gone]).pick_for(k)[0] for k in keys}
    moved = [k for k in keys if after[k] is not before[k]]
    assert moved and all(before[k] is gone for k in moved)
    assert len(moved) == sum(1 for k in keys if before[k] is gone)

    joined = Replica("http://10.0.0.9:8000", healthy=True)
    grown = {k: pool_of([*members, joined]).pick_for(k)[0] for k in keys}
    changed = [k for k in keys if grown[k] is not before[k]]
    assert changed and all(grown[k] is joined for k in changed)
    assert 3000 / 6 * 0.75 < len(changed) < 3000 / 6 * 1.25


def test_a_busy_first_choice_hands_the_key_to_the_next_in_its_ranking() -> None:
    members = replicas(3)
    pool = pool_of(members, max_load=1.5)
    k = 12345
    first, second, third = pool.ranking(k)
    assert pool.pick_for(k)[0] is first
    # Nothing else in flight: the bound is ceil(1.5 * 1 / 3) = 1, and the first has 0.
    first.outstanding = 1  # bound ceil(1.5 * 2 / 3) = 1: full
    assert pool.pick_for(k)[0] is second
    second.outstanding = 1  # bound ceil(1.5 * 3 / 3) = 2: the first is below it again
    assert pool.pick_for(k)[0] is first
    first.outstanding, second.outstanding, third.outstanding = 6, 2, 1
    # bound ceil(1.5 * 10 / 3) = 5: the first is over, the second under.
    assert pool.pick_for(k)[0] is second
    first.outstanding, second.outstanding, third.outstanding = 3, 3, 3
    assert pool.pick_for(k)[0] is first  # bound ceil(1.5 * 10 / 3) = 5
    first.outstanding, second.outstanding, third.outstanding = 3, 0, 0
    assert pool.pick_for(k)[0] is second  # bound ceil(1.5 * 4 / 3) = 2


def test_a_keyed_pick_skips_what_is_excluded_or_unusable() -> None:
    members = replicas(3)
    pool = pool_of(members)
    k = 99
    first, second, third = pool.ranking(k)
    assert pool.pick_for(k, exclude=[first])[0] is second
    second.ejected = True
    assert pool.pick_for(k, exclude=[first])[0] is third
    assert pool.pick_for(k)[0] is first


def test_some_replica_is_always_under_the_bound() -> None:
    """Whatever the loads, the pick is the highest-ranked replica under the bound."""
    draw = random.Random(5)
    for _ in range(2000):
        members = replicas(draw.randint(1, 6))
        for replica in members:
            replica.outstanding = draw.randint(0, 40)
        max_load = draw.choice([1.0, 1.1, 1.5, 3.0])
        pool = pool_of(members, max_load)
        k = draw.getrandbits(64)
        bound = math.ceil(max_load * (sum(r.outstanding for r in members) + 1) / len(members))
        under = [r for r in pool.ranking(k) if r.outstanding < bound]
        assert under, (bound, [r.outstanding for r in members])
        assert pool.pick_for(k)[0] is under[0]


def test_a_pick_tells_whether_it_is_the_conversations_first_choice() -> None:
    members = replicas(3)
    pool = pool_of(members)
    k = 4242
    first, second, _ = pool.ranking(k)
    assert pool.pick_for(k) == (first, True)
    first.outstanding = 1  # past the bound: handed on
    assert pool.pick_for(k) == (second, False)
    first.outstanding = 0
    assert pool.pick_for(k, exclude=[first]) == (second, False)
    # A retry that lands on the first choice after another was tried is still a retry.
    assert pool.pick_for(k, exclude=[second]) == (first, False)
    first.healthy = False  # gone: the next usable one is now the first choice
    assert pool.pick_for(k) == (second, True)
    for member in members:
        member.healthy = False
    with pytest.raises(NoHealthyReplica):
        pool.pick_for(k)
