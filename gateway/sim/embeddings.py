"""Deterministic stand-in embeddings: one unit vector per input text."""

from __future__ import annotations

import math
import random
import struct

from gateway.sim.text import seed_of


def embed(text: str, dim: int) -> tuple[float, ...]:
    """A unit vector of DIM float32 values, the same for the same TEXT.

    Values are rounded to float32 so that the JSON floats and the base64
    float32 encoding of one input decode to exactly the same numbers.
    """
    rng = random.Random(seed_of(text))
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    packed = struct.pack(f"<{dim}f", *(value / norm for value in raw))
    return struct.unpack(f"<{dim}f", packed)
