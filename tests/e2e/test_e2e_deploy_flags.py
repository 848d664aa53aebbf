"""The flags the deploy scripts give `vllm` parse in the release the e2e tests run.

sky/scripts/vllm-run.sh and bench-run.sh build their `vllm serve` and `vllm bench
serve` command lines on a stand-in node (tests/sky_node.py, `vllm` a recorder);
the e2e venv's vLLM, the release every deploy file pins (tests/test_vllm_version.py),
then parses each with its own argument parser. A flag vLLM renamed or dropped, or
a value it reads differently, fails here rather than on a GPU node.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import VLLM_PYTHON
from tests.sky_node import ROOT, VLLM_KEY, Node

# Parses argv (argv[1] as JSON) the way `vllm` would; prints what the gateway relies on.
PARSE = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
argv = json.loads(sys.argv[1])
parser = FlexibleArgumentParser()
if argv[:2] == ["bench", "serve"]:
    from vllm.benchmarks.serve import add_cli_args
    add_cli_args(parser)
    args = parser.parse_args(argv[2:])
    print(json.dumps({"backend": args.backend, "endpoint": args.endpoint}))
else:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    make_arg_parser(parser)
    assert argv[0] == "serve"
    args = parser.parse_args(["--model", *argv[1:]])
    compilation = args.compilation_config  # a dict, or the config once -cc filled it
    if isinstance(compilation, dict):
        mode = compilation["cudagraph_mode"]
    else:
        mode = compilation.cudagraph_mode
    print(json.dumps({
        "model": args.model,
        "attention_backend": args.attention_backend,
        "cudagraph_mode": getattr(mode, "name", str(mode)),
        "optimization_level": args.optimization_level,
        "trust_request_chat_template": args.trust_request_chat_template,
    }))
"""


def task(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "sky" / name).read_text())
    return loaded


def parsed(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(VLLM_PYTHON), "-c", PARSE, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_vllm_serve_flags_parse_in_the_pinned_release(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.weights_done("org/model", "abc123")
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    vllm = task("vllm.sky.yaml")
    env = node.env(
        vllm,
        VLLM_API_KEY=VLLM_KEY, MODEL_ID="org/model", MODEL_REVISION="abc123",
        MAX_MODEL_LEN="16384", QUANTIZATION="fp8", KV_CACHE_DTYPE="fp8",
        ATTENTION_BACKEND="FLASHINFER", CUDAGRAPH_MODE="full_decode_only",
        CHAT_TEMPLATE=str(template), TRUST_REMOTE_CODE="true",
    )  # fmt: skip
    code, out = node.run(vllm["run"], env)
    assert code == 1 and "exited with status 0 before it was ready" in out, out
    [call] = node.calls("vllm")
    assert parsed(call["argv"]) == {
        "model": "org/model",
        "attention_backend": "FLASHINFER",
        "cudagraph_mode": "FULL_DECODE_ONLY",
        "optimization_level": 2,  # vLLM's default: nothing else took -O
        "trust_request_chat_template": False,
    }


def test_vllm_bench_flags_parse_in_the_pinned_release(tmp_path: Path) -> None:
    node = Node(tmp_path)
    bench = task("bench.sky.yaml")
    env = node.env(
        bench,
        GATEWAY_URL="gateway:8080",
        OPENAI_API_KEY="vgw_key",
        RESULTS_DIR=str(tmp_path / "results"),
        RECORDER_WRITES_RESULT="1",
    )
    code, out = node.run(bench["run"], env)
    assert code == 0, out
    [call] = node.calls("vllm")
    assert parsed(call["argv"]) == {"backend": "openai-chat", "endpoint": "/v1/chat/completions"}
