"""Real vLLM: Anthropic's SDK through the gateway gets a Message, and the gateway counts
exactly the tokens vLLM reported, streamed or not."""

from __future__ import annotations

import anthropic

from tests.e2e.conftest import CHAT_MODEL, Server
from tests.servers import Process, metric

PROMPT = [{"role": "user", "content": "Name three colors."}]
# Greedy, so the streamed text is the non-streamed one (vLLM reads the field as sent).
GREEDY = {"temperature": 0}


def counted(gateway: Process) -> tuple[float, float]:
    return (
        metric(gateway.url, "gateway_prompt_tokens_total", model=CHAT_MODEL),
        metric(gateway.url, "gateway_completion_tokens_total", model=CHAT_MODEL),
    )


def test_the_anthropic_sdk_gets_a_message_and_exact_usage(
    e2e_gateway: Process, vllm_chat: Server
) -> None:
    key = e2e_gateway.api_key
    assert key is not None
    # The key as `x-api-key`, as Anthropic's SDK releases send it.
    headers = {"X-Api-Key": key, "Authorization": anthropic.omit}
    client = anthropic.Anthropic(base_url=e2e_gateway.url, api_key=key, default_headers=headers)
    with client:
        before = counted(e2e_gateway)
        message = client.messages.create(
            model=CHAT_MODEL, max_tokens=12, messages=PROMPT, extra_body=GREEDY
        )
        assert message.content and message.content[0].type == "text"
        usage = message.usage
        assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 12
        middle = counted(e2e_gateway)
        assert middle == (before[0] + usage.input_tokens, before[1] + usage.output_tokens)
        with client.messages.stream(
            model=CHAT_MODEL, max_tokens=12, messages=PROMPT, extra_body=GREEDY
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == message.content[0].text
        assert (final.usage.input_tokens, final.usage.output_tokens) == (
            usage.input_tokens,
            usage.output_tokens,
        )
        after = counted(e2e_gateway)
        assert after == (middle[0] + usage.input_tokens, middle[1] + usage.output_tokens)
        tokens = client.messages.count_tokens(model=CHAT_MODEL, messages=PROMPT)
        assert tokens.input_tokens == usage.input_tokens
