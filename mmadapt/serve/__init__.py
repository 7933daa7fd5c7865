"""Serving: `ChatEngine` (load a model once, answer OpenAI-style message lists with dynamic batching and
optional retrieval citations) and the OpenAI-compatible HTTP layer over it (`app.py`, `mmadapt serve`)."""

from mmadapt.serve.engine import ChatEngine, ChatResult, Citation, EngineConfig, Overloaded, SamplingParams

__all__ = ["ChatEngine", "ChatResult", "Citation", "EngineConfig", "Overloaded", "SamplingParams"]
