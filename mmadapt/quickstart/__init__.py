"""`mmadapt quickstart [TASK]`: offline, generated data, tiny models; prints a table, writes metrics.json."""

from __future__ import annotations


from mmadapt import registry

TASKS = tuple(registry.names("quickstart"))  # the registry's "quickstart" table is the one list
MEDIA_TASKS = ("vlm", "audio", "video")  # the ones with a connector to choose
