"""The request contract and the edits, on parsed bodies: what is refused, what is rewritten,
what is reserved."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import BatchTooLarge, InvalidRequest
from gateway.proxy.contract import Terms, read_terms
from gateway.proxy.request_edit import EditedRequest, TokenPolicy, edit_request
from gateway.proxy.routes import Route

NO_CAP = TokenPolicy(cap=None, refuse_over_cap=False, default_reserve=1000)


def edit(
    route: Route, body: dict[str, Any], policy: TokenPolicy = NO_CAP
) -> tuple[Terms, EditedRequest, dict[str, Any]]:
    raw = orjson.dumps(body)
    payload = orjson.loads(raw)
    terms = read_terms(route, payload, len(raw))
    edited = edit_request(route, payload, raw, terms, policy)
    return terms, edited, orjson.loads(edited.body)


def test_integral_numbers_become_integers_in_the_body_sent() -> None:
    terms, edited, sent = edit(Route.CHAT, {"model": "m", "messages": [{}], "max_tokens": 1e2})
    assert sent["max_tokens"] == 100 and isinstance(sent["max_tokens"], int)
    assert terms.changed
    assert edited.completion_reserve == 100


def test_an_untouched_request_goes_as_the_client_wrote_it() -> None:
    raw = b'{"model": "m",  "messages": [{"role": "user"}], "max_tokens": 5}'
    payload = orjson.loads(raw)
    terms = read_terms(Route.CHAT, payload, len(raw))
    assert edit_request(Route.CHAT, payload, raw, terms, NO_CAP).body == raw


@pytest.mark.parametrize(
    ("body", "prompts", "token_ids"),
    [
        ({"prompt": "one"}, 1, 0),
        ({"prompt": [1, 2, 3]}, 1, 3),
        ({"prompt": ["a", "b"]}, 2, 0),
        ({"prompt": [[1, 2], [3]]}, 2, 3),
        ({"prompt_embeds": "AAAA"}, 1, 0),
        ({"prompt": "x", "prompt_embeds": ["AAAA", "BBBB"]}, 3, 0),
    ],
)
def test_prompts_are_counted(body: dict[str, Any], prompts: int, token_ids: int) -> None:
    raw = orjson.dumps({"model": "m", **body})
    terms = read_terms(Route.COMPLETIONS, orjson.loads(raw), len(raw))
    assert terms.prompts == prompts
    assert terms.prompt_tokens == len(raw) // 4 + 1 + token_ids


def test_the_reservation_is_prompts_times_choices_times_the_limit() -> None:
    body = {"model": "m", "prompt": ["a", "b", "c"], "max_tokens": 50, "n": 2, "best_of": 4}
    terms, edited, _ = edit(Route.COMPLETIONS, body)
    assert (terms.prompts, terms.choices) == (3, 4)
    assert edited.completion_reserve == 3 * 4 * 50
    assert edited.token_estimate == terms.prompt_tokens + 600


def test_without_a_limit_completions_reserve_vllm_s_default_and_chat_the_setting() -> None:
    assert edit(Route.COMPLETIONS, {"model": "m", "prompt": "x"})[1].completion_reserve == 16
    assert edit(Route.CHAT, {"model": "m", "messages": [{}]})[1].completion_reserve == 1000


def test_min_tokens_raises_the_reservation_and_is_capped() -> None:
    body = {"model": "m", "messages": [{}], "max_tokens": 10, "min_tokens": 40}
    assert edit(Route.CHAT, body)[1].completion_reserve == 40
    capped = TokenPolicy(cap=32, refuse_over_cap=False, default_reserve=1000)
    _, edited, sent = edit(Route.CHAT, {**body, "min_tokens": 400}, capped)
    assert (sent["max_tokens"], sent["min_tokens"]) == (10, 32)
    assert edited.completion_reserve == 32
    refuse = TokenPolicy(cap=32, refuse_over_cap=True, default_reserve=1000)
    with pytest.raises(InvalidRequest) as caught:
        edit(Route.CHAT, {**body, "min_tokens": 400}, refuse)
    assert caught.value.param == "min_tokens"


def test_the_cap_holds_for_both_chat_limits() -> None:
    capped = TokenPolicy(cap=32, refuse_over_cap=False, default_reserve=1000)
    body = {"model": "m", "messages": [{}], "max_completion_tokens": 500, "max_tokens": 900}
    _, edited, sent = edit(Route.CHAT, body, capped)
    assert (sent["max_completion_tokens"], sent["max_tokens"]) == (32, 32)
    assert edited.completion_reserve == 32
    _, _, added = edit(Route.COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}, capped)
    assert added["max_tokens"] == 32


def test_a_stream_gets_usage_and_a_non_stream_does_not() -> None:
    _, edited, sent = edit(Route.CHAT, {"model": "m", "messages": [{}], "stream": True})
    assert edited.strip_usage and sent["stream_options"] == {"include_usage": True}
    _, edited, sent = edit(Route.CHAT, {"model": "m", "messages": [{}], "stream": False})
    assert not edited.strip_usage and "stream_options" not in sent


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        (Route.CHAT, {"messages": [{}], "stream": 1}, "stream"),
        (Route.CHAT, {"messages": [{}], "n": "2"}, "n"),
        (Route.CHAT, {"messages": [{}], "max_tokens": 2**31}, "max_tokens"),
        (Route.CHAT, {"messages": [{}], "min_tokens": -1}, "min_tokens"),
        (Route.CHAT, {"messages": []}, "messages"),
        (Route.CHAT, {"messages": [{}], "stream_options": []}, "stream_options"),
        (Route.COMPLETIONS, {}, "prompt"),
        (Route.COMPLETIONS, {"prompt": [[1], []]}, "prompt"),
        (Route.COMPLETIONS, {"prompt": [True]}, "prompt"),
        (Route.COMPLETIONS, {"prompt_embeds": [1]}, "prompt_embeds"),
        (Route.EMBEDDINGS, {"input": None}, "input"),
        (Route.EMBEDDINGS, {"input": "x", "dimensions": "8"}, "dimensions"),
        (Route.EMBEDDINGS, {"messages": "x"}, "messages"),
    ],
)
def test_non_canonical_values_are_refused(route: Route, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        edit(route, {"model": "m", **body})
    assert caught.value.param == param
    assert caught.value.status == 400


def test_the_batch_limit_counts_sequences() -> None:
    policy = TokenPolicy(cap=None, refuse_over_cap=False, default_reserve=1, max_batch=6)
    assert edit(Route.COMPLETIONS, {"model": "m", "prompt": ["a", "b"], "n": 3}, policy)
    with pytest.raises(BatchTooLarge) as caught:
        edit(Route.COMPLETIONS, {"model": "m", "prompt": ["a", "b"], "best_of": 4}, policy)
    assert caught.value.param == "prompt"
    assert "8 sequences (2 prompts x 4 choices)" in caught.value.message
    assert edit(Route.EMBEDDINGS, {"model": "m", "input": ["a"] * 6}, policy)
    with pytest.raises(BatchTooLarge):
        edit(Route.EMBEDDINGS, {"model": "m", "input": [[1]] * 7}, policy)


def test_embeddings_reserve_their_prompt_only() -> None:
    terms, edited, _ = edit(Route.EMBEDDINGS, {"model": "m", "input": [[1, 2, 3], [4]]})
    assert edited.completion_reserve == 0
    assert edited.token_estimate == terms.prompt_tokens
    assert terms.prompts == 2
