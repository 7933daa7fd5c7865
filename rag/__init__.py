"""Retrieval-augmented generation: ingest, chunk, embed, a crash-safe faiss + SQLite index, retrieval, augmentation.

Import the submodules directly (`mmadapt.rag.store.RagIndex`, ...); nothing heavy is imported here.
"""
