"""`mmadapt quickstart edit`: a tiny GPT-2 learns a generated world of facts; causal tracing finds where, ROME, MEMIT and FT-L rewrite some.

1. A world of made-up people (a shared first name and a distinct family name each) with a hometown
   and a job, each fact written as four catalogue entries ("the hometown of lisa bakoru perth");
   a word-level tokenizer and a 4-layer GPT-2 trained on them with `mmadapt train` (format text)
   until it answers every entry (up to three rounds).
   Why catalogue entries: a 4-layer model trained on sentences like "X lives in the city of" looks
   the subject up from the last token with its own MLPs, so no subject-side edit can reach the
   fact; when the answer follows the name, the fact sits in the name's last-token MLPs, the site
   that ROME and MEMIT rewrite (as causal tracing then shows).
2. Causal tracing of a few facts (heat map `trace.png`) picks the MLP layer ROME edits.
3. ROME on single facts (each from the unedited model), MEMIT on a batch of 60 through the
   deployed-checkpoint path (`edit_checkpoint`, then `revert`, checked bit for bit), FT-L on the
   single facts; efficacy on the edit entry, paraphrase on the other three entries, neighbourhood
   on people outside the batch, fluency of generations.
`metrics.json`: efficacy / paraphrase / neighborhood / fluency (the worse of ROME and MEMIT),
seconds_per_edit, and the per-method breakdown (rome_*, memit_*, ft_*).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from mmadapt.eval.metrics import accuracy as exact_accuracy
from mmadapt.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

RELATIONS: dict[str, tuple[list[str], list[str]]] = {
    "city": (["the hometown of {}", "the city of {}", "the residence of {}", "the home of {}"],
             ["paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "quito", "dakar", "hanoi", "perth", "kyiv"]),
    "job": (["the job of {}", "the trade of {}", "the work of {}", "the occupation of {}"],
            ["doctor", "pilot", "farmer", "lawyer", "baker", "writer", "nurse", "chef", "miner", "tailor"]),
}
N_SUBJECTS = 100
N_ROME = 10
N_MEMIT = 60
N_NEIGHBOURS = 5
EDITED = "city"  # the relation rewritten; the job is what the KL term keeps (ROME's "essence")
ROME = {"kl_prompts": ["the job of {}"]}
MEMIT = {"kl_prompts": ["the job of {}"], "layers": [0, 1], "mom2_update_weight": 500.0, "v_weight_decay": 0.05}
FT = {"norm_constraint": 5e-3}


def _names(rng: random.Random, n: int) -> list[str]:
    """`n` distinct made-up words of two or three syllables."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))))
    return sorted(names)


def make_world(seed: int, n_subjects: int = N_SUBJECTS) -> dict[str, dict[str, str]]:
    """{subject: {relation: object}} for N_SUBJECTS people named "first last": a few shared first names and a
    distinct family name each, so the subject's last token identifies it (as in "the Eiffel Tower")."""
    rng = random.Random(seed)
    first = _names(rng, 12)
    names = [f"{rng.choice(first)} {last}" for last in _names(rng, n_subjects)]
    rng.shuffle(names)
    return {name: {rel: rng.choice(objects) for rel, (_, objects) in RELATIONS.items()} for name in names}


def corpus(world: dict[str, dict[str, str]]) -> list[str]:
    return [f"{template.format(subject)} {obj} ." for subject, facts in world.items()
            for rel, obj in facts.items() for template in RELATIONS[rel][0]]


def edit_records(world: dict[str, dict[str, str]], subjects: list[str], neighbours: list[str], seed: int,
                 relation: str = EDITED) -> list[dict[str, Any]]:
    """One CounterFact-style request per subject: a new object, the other entries as paraphrases, and
    N_NEIGHBOURS people drawn from `neighbours` (never edited alongside) with their own answers."""
    rng = random.Random(seed)
    templates, objects = RELATIONS[relation]
    records = []
    for subject in subjects:
        true = world[subject][relation]
        others = rng.sample([n for n in neighbours if n != subject], N_NEIGHBOURS)
        records.append({
            "prompt": templates[0], "subject": subject, "target_true": true,
            "target_new": rng.choice([o for o in objects if o != true]),
            "paraphrase_prompts": [t.format(subject) for t in templates[1:]],
            "neighborhood_prompts": [{"prompt": templates[0].format(n), "target": world[n][relation]} for n in others],
        })
    return records


@torch.no_grad()
def knowledge(model: torch.nn.Module, tok, world: dict[str, dict[str, str]]) -> float:
    """Share of (subject, relation, template) prompts whose greedy next word is the true object."""
    from mmadapt.editing.tokens import Encoded, pad, pad_id

    items = [(template.format(s), obj) for s, facts in world.items() for rel, obj in facts.items() for template in RELATIONS[rel][0]]
    predictions = []
    for start in range(0, len(items), 256):
        chunk = items[start : start + 256]
        batch = [Encoded(tok(text)["input_ids"], -1, []) for text, _ in chunk]
        ids, mask = pad(batch, pad_id(tok), next(model.parameters()).device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(e.input_ids) - 1 for e in batch])
        predicted = logits[torch.arange(len(batch)), last].argmax(-1).tolist()
        predictions += tok.convert_ids_to_tokens(predicted)
    return exact_accuracy(predictions, [obj for _, obj in items], normalize=False)


def train_base(out: Path, lines: list[str], world: dict[str, dict[str, str]], seed: int, hidden: int = 128,
               layers: int = 4, epochs: int = 8) -> tuple[Path, float, float]:
    """Train the tiny GPT-2 with the core trainer until it knows the facts (up to three rounds, each
    continuing the last); returns (the final run's LLM directory, accuracy, seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmadapt.run_config import load_run
    from mmadapt.quickstart.tiny import tiny_llm_config
    from mmadapt.quickstart.tokenizer import train_word_tokenizer
    from mmadapt.train.run import train

    train_word_tokenizer(lines, out / "tokenizer")
    data = out / "facts.jsonl"
    atomic_write_text(data, "".join(json.dumps({"text": line}) + "\n" for line in lines))
    llm = {**tiny_llm_config("gpt2", hidden=hidden, layers=layers, heads=4, max_positions=64),
           "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    start, accuracy, previous = time.perf_counter(), 0.0, None
    for round_ in range(3):
        run_dir = out / f"base-{round_}"
        config = load_run({
            "model": {"llm": {"config": llm, "tokenizer": str(out / "tokenizer")}, "init_from": previous},
            "data": {"train": str(data), "format": "text", "max_length": 32},
            "training": {"threads": 1, "epochs": epochs if round_ == 0 else max(1, epochs // 2), "batch_size": 32, "lr": 3e-3, "warmup_ratio": 0.05,
                         "scheduler": "cosine", "train_modules": ["llm"], "logging_steps": 100, "precision": "fp32"},
            "objective": {"name": "sft"}, "seed": seed + round_, "output_dir": str(run_dir),
        })
        train(config, overwrite=True)  # a re-run replaces its own earlier outputs
        model = AutoModelForCausalLM.from_pretrained(run_dir / "llm", dtype=torch.float32)
        accuracy = knowledge(model.eval(), AutoTokenizer.from_pretrained(run_dir / "llm"), world)
        logger.info("round %d: the model knows %.1f%% of the facts", round_, 100 * accuracy)
        previous = str(run_dir)
        if accuracy >= 0.99:
            break
    return Path(previous) / "llm", accuracy, time.perf_counter() - start


def locate_layer(model: torch.nn.Module, tok, world: dict[str, dict[str, str]], subjects: list[str], out: Path) -> tuple[int, float]:
    """Causal tracing of a few facts: the MLP layer with the largest mean indirect effect at the subject's last token."""
    from mmadapt.editing.trace import plot_trace, trace_fact

    template = RELATIONS[EDITED][0][0]
    effects = None
    for subject in subjects:
        result = trace_fact(model, tok, template, subject, world[subject][EDITED], kinds=("hidden", "mlp", "attn"))
        effect = result.scores["mlp"][result.subject[1]] - result.corrupted  # [n_layers]
        effects = effect if effects is None else effects + effect
        if subject == subjects[0]:
            plot_trace(result, out / "trace.png")
    layer = int(effects.argmax())
    return layer, float(effects[layer] / len(subjects))


def _mean(rows: list[dict[str, float]], prefix: str) -> dict[str, float]:
    keys = ("efficacy", "paraphrase", "neighborhood", "fluency")
    return {f"{prefix}{k}": sum(r[k] for r in rows) / len(rows) for k in keys}


def run_single(model: torch.nn.Module, tok, requests: list, method: str, hparams: Any, cache: Any) -> tuple[dict[str, float], float]:
    """Each request on its own from the unedited model (weights restored exactly in between); (metrics, edit seconds)."""
    from mmadapt import registry
    from mmadapt.editing.common import restored
    from mmadapt.editing.evaluate import evaluate

    apply = registry.resolve("edit_method", method)
    rows, seconds = [], 0.0
    for request in requests:
        with restored(model, [name for name, _ in model.named_parameters() if ".mlp." in name]):
            result = apply(model, tok, [request], hparams, cache=cache)
            seconds += result.metrics["seconds"] - result.metrics.get("stats_seconds", 0.0)
            rows.append(evaluate(model, tok, [request])[0])
    return _mean(rows, f"{method}_"), seconds


def run(out: Path, connector: str | None = None, seed: int = 0) -> dict[str, float]:
    """Train, trace, edit, evaluate; print the table and write `out/metrics.json`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmadapt.config import from_dict
    from mmadapt.editing.checkpoint import edit_checkpoint, revert
    from mmadapt.editing.evaluate import evaluate, format_table
    from mmadapt.editing.ft import FTHParams
    from mmadapt.editing.requests import parse_requests
    from mmadapt.editing.rome import RomeHParams
    from mmadapt.editing.stats import StatsCache
    from mmadapt.errors import ConfigError
    from mmadapt.lineage import hash_files

    if connector is not None:
        raise ConfigError("--connector does not apply to the edit quickstart")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    torch.manual_seed(seed)
    world = make_world(seed)
    lines = corpus(world)
    llm_dir, knows, train_seconds = train_base(out, lines, world, seed)
    base_dir = llm_dir.parent
    model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(llm_dir)
    atomic_write_text(out / "corpus.txt", "\n".join(lines) + "\n")
    stats = {"corpus": str(out / "corpus.txt"), "cache_dir": str(out / "stats")}
    cache = StatsCache(out / "stats")

    subjects = list(world)
    random.Random(seed + 1).shuffle(subjects)
    batch, single, rest = subjects[:N_MEMIT], subjects[N_MEMIT : N_MEMIT + N_ROME], subjects[N_MEMIT:]
    layer, effect = locate_layer(model, tok, world, single[:3], out)
    logger.info("causal tracing: the facts sit in MLP layer %d (mean indirect effect %.2f)", layer, effect)

    single_requests = parse_requests(edit_records(world, single, subjects, seed), "rome requests")
    atomic_write_text(out / "edits.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in single_requests))
    base_metrics, _ = evaluate(model, tok, single_requests)
    rome_hp = from_dict(RomeHParams, {**ROME, "layer": layer, "stats": stats, "seed": seed})
    rome, rome_seconds = run_single(model, tok, single_requests, "rome", rome_hp, cache)
    ft, ft_seconds = run_single(model, tok, single_requests, "ft", from_dict(FTHParams, {**FT, "layer": layer}), cache)

    batch_requests = parse_requests(edit_records(world, batch, rest, seed + 2), "memit requests")
    record = edit_checkpoint(base_dir, batch_requests, "memit", {**MEMIT, "stats": stats, "seed": seed},
                             out / "edited-memit", stats_dir=out / "stats", overwrite=True,
                             allow_weak=True)  # the batch's efficacy is what this measures: a weak edit counts against it
    memit = {f"memit_{k}": v for k, v in record["metrics"]["after"].items() if k != "n_requests"}
    memit_seconds = record["metrics"]["method"]["seconds"] - record["metrics"]["method"]["stats_seconds"]
    revert(out / "edited-memit", out / "reverted", overwrite=True)
    revert_exact = float(hash_files(out / "reverted" / "llm") == hash_files(base_dir / "llm"))

    metrics = {
        **{k: min(rome[f"rome_{k}"], memit[f"memit_{k}"]) for k in ("efficacy", "paraphrase", "neighborhood", "fluency")},
        "seconds_per_edit": (rome_seconds + memit_seconds) / (N_ROME + N_MEMIT),
        **rome, "rome_seconds_per_edit": rome_seconds / N_ROME,
        **memit, "memit_seconds_per_edit": memit_seconds / N_MEMIT, "memit_seconds_per_batch": memit_seconds,
        "memit_batch_size": float(N_MEMIT),
        **ft, "ft_seconds_per_edit": ft_seconds / N_ROME,
        "base_efficacy": base_metrics["efficacy"], "base_neighborhood": base_metrics["neighborhood"],
        "base_fluency": base_metrics["fluency"], "base_knowledge": knows, "edit_layer": float(layer),
        "trace_indirect_effect": effect, "revert_exact": revert_exact, "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - wall,
    }
    atomic_write_json(out / "metrics.json", metrics)
    rows = {"base model": base_metrics, f"ROME (layer {layer}), 1 fact": {**_strip(rome, "rome_"), "seconds_per_edit": rome_seconds / N_ROME},
            f"MEMIT (layers {MEMIT['layers']}), {N_MEMIT} facts": {**_strip(memit, "memit_"), "seconds_per_edit": memit_seconds / N_MEMIT},
            f"FT-L (layer {layer}), 1 fact": {**_strip(ft, "ft_"), "seconds_per_edit": ft_seconds / N_ROME}}
    print(f"\nquickstart edit: the base model knows {100 * knows:.1f}% of {len(lines)} catalogue entries "
          f"(trained in {train_seconds:.0f} s); causal tracing locates the facts in MLP layer {layer}")
    print(format_table(rows))
    print(f"revert of the MEMIT checkpoint bit-exact: {bool(revert_exact)}; heat map: {out / 'trace.png'}")
    return metrics


def _strip(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
