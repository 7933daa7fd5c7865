"""mmadapt: post-training for LLMs (multimodal adaptation, preference optimisation, RAG, editing, merging)."""

__version__ = "0.1.0"
