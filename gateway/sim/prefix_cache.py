"""The simulated engine's prefix cache: what vLLM's automatic prefix caching would
find of a prompt, counted as vLLM counts it.

vLLM keeps the KV cache of prompts in blocks of tokens, each block named by a hash
of its tokens and of every block before it, and reuses the leading blocks of a new
prompt that it already holds. The simulator does the same over its own tokens (a
prompt's words): blocks of 16, chained hashes, the least recently used block
evicted first past `max_blocks`. Each prompt adds its length to
`vllm:prefix_cache_queries_total` and the words of its leading cached blocks to
`vllm:prefix_cache_hits_total`, as vLLM's counters do in tokens. The tokens not
found cost prefill time before the first token when `--prefill-ms-per-1k-tokens`
is set (`Engine.prefill`).
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK_WORDS = 16
MAX_BLOCKS = 65_536


class PrefixCache:
    def __init__(self, block_words: int = BLOCK_WORDS, max_blocks: int = MAX_BLOCKS) -> None:
        self._block = block_words
        self._max = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def lookup(self, words: list[str]) -> int:
        """The words of WORDS' leading blocks that were cached; every full block of WORDS
        is cached from now on."""
        hits, found, parent = 0, True, 0
        for start in range(0, len(words) - self._block + 1, self._block):
            parent = hash((parent, *words[start : start + self._block]))
            if found and parent in self._blocks:
                hits += self._block
                self._blocks.move_to_end(parent)
                continue
            found = False
            self._blocks[parent] = None
        while len(self._blocks) > self._max:
            self._blocks.popitem(last=False)
        return hits

    def __len__(self) -> int:
        return len(self._blocks)
