"""Storage backends of a RAG index (today: faiss + SQLite in `faiss_sqlite`)."""
