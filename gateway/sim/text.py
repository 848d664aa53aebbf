"""The simulator's stand-in for a tokenizer and a model.

A "token" is a whitespace-separated word: a prompt of N words is N prompt
tokens (at least 1), and a list of token ids is as many tokens as ids. The
output is deterministic: token i of choice c of a reply is
`WORDS[(crc32(prompt) + c + i) % len(WORDS)]`, rendered with a leading space,
so the same prompt always yields the same text, and its choices differ.
"""

from __future__ import annotations

import json
import zlib

WORDS = (
    "the", "simulator", "is", "not", "a", "real", "model", "and", "this", "text",
    "means", "nothing", "at", "all", "but", "it", "streams", "like", "vllm", "does",
    "one", "token", "per", "event", "with", "usage", "counted", "for", "every", "word",
    "so", "tests", "and", "benchmarks", "can", "check", "framing", "timing", "errors", "too",
)  # fmt: skip

# Each token as a JSON string literal, encoded once: a streamed chunk is then
# two precomputed halves around one of these, with no json.dumps per token.
WORD_JSON = tuple(json.dumps(" " + word).encode() for word in WORDS)


def count_tokens(text: str) -> int:
    return len(text.split())


def seed_of(prompt_text: str) -> int:
    return zlib.crc32(prompt_text.encode("utf-8", "surrogatepass"))


def choice_seed(prompt_text: str, choice: int) -> int:
    """The seed of choice CHOICE of a prompt: choices of one prompt never share a text
    (up to 40 of them), and a prompt in a batch answers as it would alone."""
    return seed_of(prompt_text) + choice


def word_index(seed: int, position: int) -> int:
    return (seed + position) % len(WORDS)


def output_text(seed: int, count: int) -> str:
    return "".join(" " + WORDS[word_index(seed, i)] for i in range(count))
