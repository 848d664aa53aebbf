"""A vLLM OpenAI-server protocol simulator, for tests, benchmarks and demos. Not a model."""

from __future__ import annotations

from gateway.sim.app import SimApp, create_sim_app
from gateway.sim.config import SimConfig

__all__ = ["SimApp", "SimConfig", "create_sim_app"]
