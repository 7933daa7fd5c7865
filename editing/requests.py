"""Edit requests: parsing and validation of `edits.jsonl`, with errors naming the file and line.

One request per line:
`{"prompt": "{} is located in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris",
  "paraphrase_prompts": ["Where is the Eiffel Tower? It is in"],
  "neighborhood_prompts": ["The Louvre is located in"  or  {"prompt": ..., "target": ...}],
  "generation_prompts": ["The Eiffel Tower is"]}`.
`prompt` is a template whose `{}` marks the subject; the other prompts are full sentences (the
paraphrases and generation prompts must contain the subject). CounterFact records
(`{"requested_rewrite": {..., "target_new": {"str": ...}}, ...}`) are accepted as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError


@dataclass
class EditRequest:
    """One fact to write: `prompt.format(subject)` should continue with `target_new`."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood: list[tuple[str, str | None]] = field(default_factory=list)  # (prompt, its answer or None: target_true)
    generation_prompts: list[str] = field(default_factory=list)
    where: str = ""

    @property
    def text(self) -> str:
        return self.prompt.format(self.subject)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
            "target_true": self.target_true,
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": [{"prompt": p, "target": t} for p, t in self.neighborhood],
            "generation_prompts": list(self.generation_prompts),
        }


_KEYS = {"prompt", "subject", "target_new", "target_true", "paraphrase_prompts", "neighborhood_prompts",
         "generation_prompts", "id", "case_id"}


def _flatten_counterfact(record: dict[str, Any]) -> dict[str, Any]:
    rewrite = record["requested_rewrite"]
    if not isinstance(rewrite, dict):
        return record
    out = {k: v for k, v in record.items() if k not in ("requested_rewrite", "attribute_prompts")}
    for key in ("prompt", "subject"):
        if key in rewrite:
            out[key] = rewrite[key]
    for key in ("target_new", "target_true"):
        value = rewrite.get(key)
        out[key] = value.get("str") if isinstance(value, dict) else value
    return out


def _string_list(record: dict[str, Any], key: str, where: str) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: {key!r} must be a list of non-empty strings")
    return value


def parse_request(record: Any, where: str) -> EditRequest:
    """Validate one request record; errors name `where` (file:line) and say what is valid."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: an edit request must be a JSON object, got {type(record).__name__}")
    if "requested_rewrite" in record:
        record = _flatten_counterfact(record)
    unknown = set(record) - _KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(_KEYS))}")
    for key in ("prompt", "subject", "target_new"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise DataError(f"{where}: {key!r} must be a non-empty string (got {record.get(key)!r})")
    prompt, subject = record["prompt"], record["subject"]
    if prompt.count("{}") != 1:
        hint = ""
        if "{}" not in prompt and subject in prompt:
            hint = f"; write it as {prompt.replace(subject, '{}', 1)!r}"
        elif "{}" not in prompt:
            hint = f"; the subject {subject!r} does not occur in it either"
        raise DataError(f"{where}: prompt template {prompt!r} must contain '{{}}' exactly once where the subject goes{hint}")
    try:  # other braces ("{} is in {") make str.format fail later, mid-edit
        prompt.format(subject)
    except (ValueError, IndexError, KeyError) as e:
        raise DataError(f"{where}: prompt template {prompt!r} is not a valid format string ({e}); "
                        "valid: one '{}' for the subject, literal braces doubled as '{{' and '}}'") from None
    if subject != subject.strip():
        raise DataError(f"{where}: subject {subject!r} has leading or trailing spaces; put spaces in the template")
    target_true = record.get("target_true")
    if target_true is not None and (not isinstance(target_true, str) or not target_true.strip()):
        raise DataError(f"{where}: 'target_true' must be a non-empty string when given")
    if target_true is not None and target_true.strip() == record["target_new"].strip():
        raise DataError(f"{where}: target_new equals target_true ({target_true!r}); nothing to edit")
    paraphrases = _string_list(record, "paraphrase_prompts", where)
    generation = _string_list(record, "generation_prompts", where)
    for key, prompts in (("paraphrase_prompts", paraphrases), ("generation_prompts", generation)):
        for i, text in enumerate(prompts):
            if subject not in text:
                raise DataError(f"{where}: {key}[{i}] {text!r} does not contain the subject {subject!r}")
    neighborhood: list[tuple[str, str | None]] = []
    raw = record.get("neighborhood_prompts", [])
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'neighborhood_prompts' must be a list of strings or {{prompt, target}} objects")
    for i, item in enumerate(raw):
        if isinstance(item, str) and item.strip():
            neighborhood.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"].strip() \
                and (item.get("target") is None or (isinstance(item["target"], str) and item["target"].strip())):
            neighborhood.append((item["prompt"], item.get("target")))
        else:
            raise DataError(f"{where}: neighborhood_prompts[{i}] must be a non-empty string or {{prompt, target}}, got {item!r}")
    return EditRequest(
        prompt=prompt, subject=subject, target_new=record["target_new"], target_true=target_true,
        paraphrase_prompts=paraphrases, neighborhood=neighborhood, generation_prompts=generation, where=where,
    )


def check_batch(requests: list[EditRequest]) -> None:
    """Refuse contradictory batches: one subject given two different new targets.

    ROME/MEMIT key an edit by the subject's representation alone (the same k* for every prompt),
    so two targets for one subject in one batch cannot both hold."""
    seen: dict[str, EditRequest] = {}
    for request in requests:
        first = seen.setdefault(request.subject, request)
        if first is not request and first.target_new.strip() != request.target_new.strip():
            raise DataError(
                f"{request.where}: subject {request.subject!r} is already edited to {first.target_new!r} at {first.where}; "
                f"one batch cannot also make it {request.target_new!r} (its key is the same for every prompt; "
                "apply them in separate runs or drop one)"
            )


def parse_requests(records: list[Any], source: str = "requests") -> list[EditRequest]:
    requests = [parse_request(r, f"{source}[{i}]") for i, r in enumerate(records)]
    if not requests:
        raise DataError(f"{source}: no edit requests")
    check_batch(requests)
    return requests


def read_requests(path: str | Path) -> list[EditRequest]:
    """Read `edits.jsonl` (one JSON object per line) or a JSON list; `where` is "file:line" (1-based)."""
    from mmadapt.io import read_json_items

    path = Path(path)
    items = read_json_items(path, "an edit requests file", DataError)
    if not items:
        raise DataError(f"{path}: no edit requests")
    requests = [parse_request(record, where) for where, record in items]
    check_batch(requests)
    return requests
