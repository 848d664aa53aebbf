"""The request contract and the edits, on parsed bodies: what is refused, what is rewritten,
what is reserved."""

from __future__ import annotations

import dataclasses
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


# The edges of each rule, one value either side (kept sharp by `make mutation`).


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        ({"max_tokens": 2**31 - 1}, 2**31 - 1),
        ({"max_tokens": 2147483647.0}, 2**31 - 1),
        ({"min_tokens": 0}, 0),
        ({"min_tokens": 0.0}, 0),
        ({"n": 1}, 1),
        ({"best_of": 1.0}, 1),
    ],
)
def test_the_smallest_and_largest_counts_are_accepted(body: dict[str, Any], sent: int) -> None:
    terms, _, out = edit(Route.CHAT, {"model": "m", "messages": [{}], **body})
    name = next(iter(body))
    assert out[name] == sent and type(out[name]) is int
    assert terms.changed is isinstance(body[name], float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2147483648.0, "'max_tokens' must be an integer, not a fraction."),
        (-2147483648.0, "'max_tokens' must be an integer, not a fraction."),
        (2**31, "'max_tokens' must be between 1 and 2147483647, not 2147483648."),
        (0, "'max_tokens' must be between 1 and 2147483647, not 0."),
        ("8", "'max_tokens' must be an integer, not a string."),
        (True, "'max_tokens' must be an integer, not a boolean."),
        ([8], "'max_tokens' must be an integer, not an array."),
        ({"v": 8}, "'max_tokens' must be an integer, not an object."),
        (8.5, "'max_tokens' must be an integer, not a fraction."),
    ],
)
def test_a_refused_count_names_what_it_got(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        edit(Route.COMPLETIONS, {"model": "m", "prompt": "x", "max_tokens": value})
    assert (str(caught.value), caught.value.param) == (message, "max_tokens")


def test_min_tokens_may_be_zero_but_not_negative() -> None:
    with pytest.raises(InvalidRequest) as caught:
        edit(Route.COMPLETIONS, {"model": "m", "prompt": "x", "min_tokens": -1})
    assert str(caught.value) == "'min_tokens' must be between 0 and 2147483647, not -1."


@pytest.mark.parametrize(
    ("fields", "stream"),
    [({}, False), ({"stream": None}, False), ({"stream": False}, False), ({"stream": True}, True)],
)
def test_stream_is_true_only_when_written_true(fields: dict[str, Any], stream: bool) -> None:
    for route, body in ((Route.CHAT, {"messages": [{}]}), (Route.COMPLETIONS, {"prompt": "x"})):
        terms = read_terms(route, {"model": "m", **body, **fields}, 10)
        assert terms.stream is stream


@pytest.mark.parametrize(
    ("options", "param", "message"),
    [
        ({"include_usage": "yes"}, "stream_options.include_usage", "not a string"),
        ({"continuous_usage_stats": 1}, "stream_options.continuous_usage_stats", "not a number"),
        ("yes", "stream_options", "not a string"),
    ],
)
def test_stream_options_hold_only_booleans(options: object, param: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        edit(Route.COMPLETIONS, {"model": "m", "prompt": "x", "stream_options": options})
    assert caught.value.param == param
    assert str(caught.value).endswith(f"must be true or false, {message}.") or (
        param == "stream_options" and str(caught.value).endswith(f"an object, {message}.")
    )


def test_null_stream_options_are_accepted() -> None:
    options = {"include_usage": None, "continuous_usage_stats": False}
    for value in (None, options):
        terms = read_terms(Route.CHAT, {"model": "m", "messages": [{}], "stream_options": value}, 1)
        assert not terms.stream


@pytest.mark.parametrize(
    ("body", "prompts", "token_ids"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 1, 0),
        ({"input": ["a", "b"], "messages": "ignored: input wins"}, 2, 0),
        ({"input": [[1, 2], [3, 4, 5]]}, 2, 5),
        ({"input": [7, 8]}, 1, 2),
    ],
)
def test_embedding_inputs_are_counted(body: dict[str, Any], prompts: int, token_ids: int) -> None:
    terms = read_terms(Route.EMBEDDINGS, {"model": "m", **body}, 40)
    assert (terms.prompts, terms.prompt_tokens, terms.choices) == (prompts, 11 + token_ids, 1)
    assert not terms.stream and terms.sequences == prompts


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt_embeds": []}, "prompt_embeds"),
        ({"prompt_embeds": ["AAAA", 1]}, "prompt_embeds"),
        ({"prompt_embeds": {"a": "AAAA"}}, "prompt_embeds"),
        ({"prompt": None, "prompt_embeds": None}, "prompt"),
        ({"prompt": [[1, 2], [True]]}, "prompt"),
        ({"prompt": [[1], "a"]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
    ],
)
def test_mixed_or_empty_prompts_are_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        edit(Route.COMPLETIONS, {"model": "m", **body})
    assert caught.value.param == param


def test_choices_are_the_larger_of_n_and_best_of() -> None:
    for n, best_of, choices in ((None, None, 1), (3, None, 3), (None, 5, 5), (6, 2, 6)):
        body = {"model": "m", "prompt": "x", "n": n, "best_of": best_of}
        assert read_terms(Route.COMPLETIONS, body, 8).choices == choices


def test_a_request_at_the_cap_is_neither_refused_nor_rewritten() -> None:
    raw = b'{"model": "m",  "messages": [{}], "max_tokens": 32, "min_tokens": 32}'
    for refuse in (False, True):
        policy = TokenPolicy(cap=32, refuse_over_cap=refuse, default_reserve=1000)
        payload = orjson.loads(raw)
        edited = edit_request(Route.CHAT, payload, raw, read_terms(Route.CHAT, payload, 9), policy)
        assert edited.body == raw
        assert edited.completion_reserve == 32


def test_over_the_cap_is_refused_naming_the_field_or_lowered() -> None:
    body = {"model": "m", "messages": [{}], "max_completion_tokens": 33}
    refuse = TokenPolicy(cap=32, refuse_over_cap=True, default_reserve=1000)
    with pytest.raises(InvalidRequest) as caught:
        edit(Route.CHAT, body, refuse)
    assert caught.value.param == "max_completion_tokens"
    assert str(caught.value) == "max_completion_tokens is 33, over this API key's limit of 32."
    clamp = TokenPolicy(cap=32, refuse_over_cap=False, default_reserve=1000)
    _, edited, sent = edit(Route.CHAT, body, clamp)
    assert sent["max_completion_tokens"] == 32 and "max_tokens" not in sent
    assert edited.completion_reserve == 32


def test_a_chat_without_a_limit_gets_the_cap_as_max_tokens() -> None:
    capped = TokenPolicy(cap=32, refuse_over_cap=True, default_reserve=1000)
    _, edited, sent = edit(Route.CHAT, {"model": "m", "messages": [{}], "max_tokens": None}, capped)
    assert sent["max_tokens"] == 32 and edited.completion_reserve == 32


def test_a_stream_that_asked_for_usage_is_left_alone() -> None:
    raw = b'{"model":"m", "prompt":"x", "stream":true, "stream_options":{"include_usage":true}}'
    payload = orjson.loads(raw)
    terms = read_terms(Route.COMPLETIONS, payload, len(raw))
    edited = edit_request(Route.COMPLETIONS, payload, raw, terms, NO_CAP)
    assert edited.body == raw and not edited.strip_usage


def test_asking_for_usage_drops_continuous_stats_and_keeps_the_rest() -> None:
    options = {"include_usage": False, "continuous_usage_stats": True, "a": 1, "z": 2}
    body = {"model": "m", "messages": [{}], "stream": True, "stream_options": options}
    _, edited, sent = edit(Route.CHAT, body)
    assert edited.strip_usage
    assert sent["stream_options"] == {"include_usage": True, "a": 1, "z": 2}


def test_a_limit_of_zero_min_tokens_and_null_fields_reserve_the_default() -> None:
    body = {"model": "m", "prompt": "x", "max_tokens": None, "min_tokens": None}
    assert edit(Route.COMPLETIONS, body)[1].completion_reserve == 16
    chat = {"model": "m", "messages": [{}], "max_completion_tokens": None, "max_tokens": 7}
    assert edit(Route.CHAT, chat)[1].completion_reserve == 7
    chat = {"model": "m", "messages": [{}], "max_completion_tokens": 9, "max_tokens": 7}
    assert edit(Route.CHAT, chat)[1].completion_reserve == 9


def test_one_prompt_over_the_batch_limit_names_n() -> None:
    policy = TokenPolicy(cap=None, refuse_over_cap=False, default_reserve=1, max_batch=2)
    with pytest.raises(BatchTooLarge) as caught:
        edit(Route.CHAT, {"model": "m", "messages": [{}], "n": 3}, policy)
    assert caught.value.param == "n"
    assert str(caught.value) == (
        "This request asks for 3 sequences (1 prompts x 3 choices); "
        "this API key allows at most 2 per request."
    )
    with pytest.raises(BatchTooLarge) as caught:
        edit(Route.EMBEDDINGS, {"model": "m", "input": ["a", "b", "c"]}, policy)
    assert caught.value.param == "input"
    assert str(caught.value).startswith("This request asks for 3 inputs;")


def test_an_embeddings_body_is_sent_again_only_when_rewritten() -> None:
    raw = b'{"model":"m",  "input":"x", "dimensions": 8}'
    payload = orjson.loads(raw)
    terms = read_terms(Route.EMBEDDINGS, payload, len(raw))
    edited = edit_request(Route.EMBEDDINGS, payload, raw, terms, NO_CAP)
    assert edited.body == raw and not edited.strip_usage
    _, edited, sent = edit(Route.EMBEDDINGS, {"model": "m", "input": "x", "dimensions": 8.0})
    assert type(sent["dimensions"]) is int and edited.body == orjson.dumps(sent)


def test_terms_and_edits_are_values_no_later_step_can_change() -> None:
    terms, edited, _ = edit(Route.CHAT, {"model": "m", "messages": [{}]})
    for value, name in ((terms, "prompts"), (edited, "completion_reserve"), (NO_CAP, "cap")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, 10**6)
        assert not hasattr(value, "__dict__")  # slots: one small object per request


def test_a_chat_s_prompt_estimate_is_its_size_in_tokens() -> None:
    for size in (0, 3, 4, 401):
        terms = read_terms(Route.CHAT, {"model": "m", "messages": [{}]}, size)
        assert (terms.prompts, terms.prompt_tokens) == (1, size // 4 + 1)
