"""Hugging Face vision-language checkpoints in and out: their own modules and processors, wrapped, never copied."""
