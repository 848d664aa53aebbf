"""The admin UI's session store on a clock the test moves: lifetimes to the boundary,
the size bound, least-recently-used eviction, and the cookie parser.

`tests/test_admin_ui.py` signs in through a real gateway; this module pins the rules
that would take minutes of real time to reach there (an idle timeout, a maximum age)
and the edges a browser never sends (a cookie named twice, odd spacing).
"""

from __future__ import annotations

import base64

import pytest

from gateway.admin.sessions import COOKIE_NAME, Session, SessionStore, cookie_value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, *, idle: float = 60.0, age: float = 600.0, size: int = 10) -> SessionStore:
    return SessionStore(idle_seconds=idle, max_age_seconds=age, max_sessions=size, clock=clock)


@pytest.mark.parametrize(
    ("idle", "age", "size"),
    [(0, 600, 10), (-1, 600, 10), (60, 0, 10), (60, -5, 10), (60, 600, 0), (60, 600, -1)],
)
def test_a_store_with_a_lifetime_or_size_not_positive_is_refused(
    idle: float, age: float, size: int
) -> None:
    with pytest.raises(ValueError, match="positive"):
        SessionStore(idle_seconds=idle, max_age_seconds=age, max_sessions=size)


def test_the_smallest_positive_bounds_are_accepted() -> None:
    clock = Clock()
    sessions = store(clock, idle=0.001, age=0.001, size=1)
    session_id, _ = sessions.create("admin")
    assert sessions.get(session_id) is not None
    assert (sessions.idle_seconds, sessions.max_age_seconds, sessions.max_sessions) == (
        0.001,
        0.001,
        1,
    )


def test_a_session_lives_until_idle_longer_than_the_idle_timeout() -> None:
    clock = Clock()
    sessions = store(clock, idle=60)
    session_id, created = sessions.create("admin")
    clock.now += 60  # exactly the timeout: still live
    assert sessions.get(session_id) is created
    assert created.last_seen == clock.now
    clock.now += 60  # idle clock restarted by the get above: still live
    assert sessions.get(session_id) is created
    clock.now += 60.5
    assert sessions.get(session_id) is None
    assert len(sessions) == 0
    clock.now -= 100  # gone for good, even if the clock were to step back
    assert sessions.get(session_id) is None


def test_a_session_left_for_long_is_gone_on_its_next_use() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, age=100_000)
    session_id, _ = sessions.create("admin")
    clock.now = 2000.0  # twice the time it was last seen: idle 1,000 s
    assert sessions.get(session_id) is None


def test_a_session_in_use_for_far_longer_than_its_age_is_gone() -> None:
    clock = Clock()
    sessions = store(clock, idle=100_000, age=900)
    session_id, _ = sessions.create("admin")
    clock.now = 2000.0  # twice its creation time: 1,000 s old
    assert sessions.get(session_id) is None


def test_a_session_left_for_long_is_pruned_by_the_next_sign_in() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, age=100_000)
    sessions.create("admin")
    clock.now = 2000.0
    sessions.create("admin")
    assert len(sessions) == 1


def test_a_session_in_use_ends_at_its_maximum_age() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, age=100)
    session_id, created = sessions.create("admin")
    for _ in range(2):
        clock.now += 50
        assert sessions.get(session_id) is created  # 100 s old: exactly the age, live
    clock.now += 0.5
    assert sessions.get(session_id) is None
    assert len(sessions) == 0


def test_unknown_empty_and_missing_ids_find_nothing() -> None:
    sessions = store(Clock())
    session_id, _ = sessions.create("admin")
    assert sessions.get(None) is None
    assert sessions.get("") is None
    assert sessions.get(session_id + "x") is None
    assert sessions.get(session_id[:-1]) is None
    assert len(sessions) == 1


def test_each_session_has_its_own_random_id_and_csrf_token() -> None:
    sessions = store(Clock())
    first_id, first = sessions.create("alice")
    second_id, second = sessions.create("bob")
    assert first_id != second_id and first.csrf_token != second.csrf_token
    # 256 random bits each, base64url without padding.
    for token in (first_id, second_id, first.csrf_token, second.csrf_token):
        assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert sessions.get(first_id) is first and first.identity == "alice"
    assert sessions.get(second_id) is second and second.identity == "bob"
    assert first.created == first.last_seen == 1000.0


def test_delete_ends_only_the_session_named() -> None:
    sessions = store(Clock())
    first_id, _ = sessions.create("alice")
    second_id, second = sessions.create("bob")
    sessions.delete(first_id)
    sessions.delete(None)
    sessions.delete("")
    sessions.delete("no-such-session")
    assert sessions.get(first_id) is None
    assert sessions.get(second_id) is second
    assert len(sessions) == 1


def test_past_the_size_bound_the_least_recently_used_session_goes() -> None:
    clock = Clock()
    sessions = store(clock, size=2)
    first_id, first = sessions.create("first")
    clock.now += 1
    second_id, _ = sessions.create("second")
    clock.now += 1
    assert sessions.get(first_id) is first  # now the most recently used
    third_id, third = sessions.create("third")
    assert len(sessions) == 2
    assert sessions.get(second_id) is None
    assert sessions.get(first_id) is first and sessions.get(third_id) is third


def test_creating_a_session_prunes_the_idle_ones_oldest_first() -> None:
    clock = Clock()
    sessions = store(clock, idle=60, size=10)
    stale_id, _ = sessions.create("stale")
    clock.now += 30
    fresh_id, fresh = sessions.create("fresh")
    clock.now += 30  # stale is idle exactly 60 s: kept
    sessions.create("third")
    assert len(sessions) == 3
    clock.now += 1  # stale idle 61 s, fresh 31 s
    sessions.create("fourth")
    assert len(sessions) == 3  # stale pruned at creation, before any get
    assert sessions.get(fresh_id) is fresh
    assert sessions.get(stale_id) is None
    clock.now += 1000
    sessions.create("last")
    assert len(sessions) == 1  # every idle one pruned, not only the first


def test_csrf_token_matches_only_itself() -> None:
    session = Session("admin", "token-abc", created=0.0, last_seen=0.0)
    assert session.csrf_matches(b"token-abc")
    assert not session.csrf_matches(None)
    assert not session.csrf_matches(b"")
    assert not session.csrf_matches(b"token-abd")
    assert not session.csrf_matches(b"token-abc ")


def test_cookie_value_reads_the_session_cookie_among_others() -> None:
    value = cookie_value([(b"Cookie", b"theme=dark; " + COOKIE_NAME.encode() + b"=abc; x=1")])
    assert value == "abc"
    assert cookie_value([(b"cookie", b"  " + COOKIE_NAME.encode() + b" = abc  ")]) is None
    assert cookie_value([(b"COOKIE", COOKIE_NAME.encode() + b"=  abc  ")]) == "abc"
    assert cookie_value([(b"cookie", b"other=1"), (b"cookie", b"mine=v")], name="mine") == "v"


def test_cookie_value_is_none_when_absent_nameless_or_given_twice() -> None:
    name = COOKIE_NAME.encode()
    assert cookie_value([]) is None
    assert cookie_value([(b"set-cookie", name + b"=abc")]) is None
    assert cookie_value([(b"x-cookie", name + b"=abc")]) is None
    assert cookie_value([(b"a-cookie", name + b"=abc")]) is None
    assert cookie_value([(b"accept", name + b"=abc")]) is None
    assert cookie_value([(b"cookie", name)]) is None  # no "=": not a value
    assert cookie_value([(b"cookie", name + b"2=abc")]) is None
    assert cookie_value([(b"cookie", b"x" + name + b"=abc")]) is None
    assert cookie_value([(b"cookie", name + b"=a; " + name + b"=b")]) is None
    assert cookie_value([(b"cookie", name + b"=a"), (b"cookie", name + b"=a")]) is None
    assert cookie_value([(b"cookie", name + b"=")]) == ""
