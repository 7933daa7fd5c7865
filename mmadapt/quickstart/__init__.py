"""`mmadapt quickstart [TASK]`: offline, generated data, tiny models; prints a table, writes metrics.json."""

from __future__ import annotations


TASKS = ("vlm", "audio", "video", "dpo", "rag", "edit", "merge", "hf-vlm")
MEDIA_TASKS = ("vlm", "audio", "video")  # the ones with a connector to choose
