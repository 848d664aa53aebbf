"""vllm-gateway: an authenticated, OpenAI-compatible gateway in front of vLLM servers."""

__version__ = "0.1.0"
