"""Real vLLM's benchmark client, `vllm bench serve`, measures through the gateway."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import CHAT_MODEL, CHAT_MODEL_DIR, VLLM_PYTHON
from tests.servers import Process

LAUNCHER = Path(__file__).resolve().parents[2] / "e2e" / "vllm_bench_serve.py"


def test_vllm_bench_serve_through_the_gateway(e2e_gateway: Process, tmp_path: Path) -> None:
    command = [
        str(VLLM_PYTHON),
        str(LAUNCHER),
        "--backend",
        "openai-chat",
        "--base-url",
        e2e_gateway.url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        CHAT_MODEL,
        "--tokenizer",
        str(CHAT_MODEL_DIR),
        "--dataset-name",
        "random",
        "--random-input-len",
        "16",
        "--random-output-len",
        "8",
        "--num-prompts",
        "8",
        "--max-concurrency",
        "4",
    ]
    # vllm bench serve sends $OPENAI_API_KEY as the Bearer key, as it would a gateway key.
    env = {**os.environ, "OPENAI_API_KEY": str(e2e_gateway.api_key), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert re.search(r"Successful requests:\s+8\b", output), output[-3000:]
    assert re.search(r"Failed requests:\s+0\b", output), output[-3000:]
    assert re.search(r"Median TTFT \(ms\):\s+[\d.]+", output)
