"""Data formats (conversations, preference pairs, plain text), chat templates, collators, media."""
