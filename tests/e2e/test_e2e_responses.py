"""Real vLLM: OpenAI's Responses API through the gateway, streamed or not, gives vLLM's
bytes and exactly the tokens vLLM reported; a stored response is read back by id."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import openai

from tests.e2e.conftest import CHAT_MODEL, CHAT_MODEL_DIR, VLLM_PYTHON, Server
from tests.e2e.test_vllm_bench import LAUNCHER
from tests.servers import Process, metric

INPUT = "Name three colors."


def counted(gateway: Process) -> tuple[float, float]:
    return (
        metric(gateway.url, "gateway_prompt_tokens_total", model=CHAT_MODEL),
        metric(gateway.url, "gateway_completion_tokens_total", model=CHAT_MODEL),
    )


def normalised(text: str) -> str:
    """vLLM's bytes but for what differs per response: ids and creation times."""
    text = re.sub(r'"(id|item_id)":"[^"]*"', '"id":""', text)
    return re.sub(r'"created_at":\d+', '"created_at":0', text)


def test_the_sdk_gets_responses_and_exact_usage(e2e_gateway: Process) -> None:
    client = openai.OpenAI(base_url=f"{e2e_gateway.url}/v1", api_key=e2e_gateway.api_key)
    with client:
        before = counted(e2e_gateway)
        created = client.responses.create(
            model=CHAT_MODEL, input=INPUT, max_output_tokens=12, temperature=0
        )
        usage = created.usage
        assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 12
        middle = counted(e2e_gateway)
        assert middle == (before[0] + usage.input_tokens, before[1] + usage.output_tokens)
        events = list(
            client.responses.create(
                model=CHAT_MODEL, input=INPUT, max_output_tokens=12, temperature=0, stream=True
            )
        )
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        final = events[-1].response  # type: ignore[union-attr]
        assert final.output_text == created.output_text
        assert final.usage is not None
        assert (final.usage.input_tokens, final.usage.output_tokens) == (
            usage.input_tokens,
            usage.output_tokens,
        )
        assert counted(e2e_gateway) == (
            middle[0] + usage.input_tokens,
            middle[1] + usage.output_tokens,
        )
        # Stored by vLLM (VLLM_ENABLE_RESPONSES_API_STORE), found by the gateway.
        assert client.responses.retrieve(created.id).output_text == created.output_text
        assert client.responses.retrieve(final.id).id == final.id


def test_the_bytes_are_vllm_s(e2e_gateway: Process, vllm_chat: Server) -> None:
    auth = {"Authorization": f"Bearer {e2e_gateway.api_key}"}
    for stream in (False, True):
        body = {
            "model": CHAT_MODEL,
            "input": INPUT,
            "max_output_tokens": 8,
            "temperature": 0,
            "stream": stream,
        }
        through = httpx.post(
            f"{e2e_gateway.url}/v1/responses", json=body, headers=auth, timeout=120
        )
        direct = httpx.post(
            f"{vllm_chat.url}/v1/responses", json=body, headers=vllm_chat.headers, timeout=120
        )
        assert through.status_code == direct.status_code == 200
        assert through.headers["content-type"] == direct.headers["content-type"]
        assert normalised(through.text) == normalised(direct.text)


def test_vllm_bench_serve_responses_through_the_gateway(
    e2e_gateway: Process, tmp_path: Path
) -> None:
    command = [str(VLLM_PYTHON), str(LAUNCHER), "--backend", "openai-responses"]
    command += ["--base-url", e2e_gateway.url, "--endpoint", "/v1/responses"]
    command += ["--model", CHAT_MODEL, "--tokenizer", str(CHAT_MODEL_DIR)]
    command += ["--dataset-name", "random", "--random-input-len", "16"]
    command += ["--random-output-len", "8", "--num-prompts", "8", "--max-concurrency", "4"]
    env = {**os.environ, "OPENAI_API_KEY": str(e2e_gateway.api_key), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert re.search(r"Successful requests:\s+8\b", output), output[-3000:]
    assert re.search(r"Failed requests:\s+0\b", output), output[-3000:]
