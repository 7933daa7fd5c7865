"""Connectors: encoder features [B, N, in_dim] -> LLM embeddings [B, M, out_dim]; built by name via mmadapt.registry."""
