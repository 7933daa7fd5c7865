"""Our ROME (editing/rome.py) against the original ROME code (kmeng01/rome) on identical settings, side by side.

Run: `python benchmarks/rome_vs_reference.py [--rome-repo /work/.mirror/kmeng01+rome/repo] [--edits 10]`.
The reference is imported at run time from a fetched snapshot (a bare git directory: its `rome/`, `util/`
and `globals.yml` are extracted to a temporary directory; or a checkout), never copied into this tree.
Its only change: the hard-coded device "cuda" in rome/compute_u.py and rome/compute_v.py becomes the
model's device, so it runs on CPU. Identical settings: the same tiny GPT-2 trained on the edit
quickstart's generated world (so there are facts to rewrite), the same requests, the same layer
(causal tracing), the same number of context templates (21: "" plus 20 sampled, as ROME's
`context_template_length_params [[5, 10], [10, 10]]`), the same value-search hyper-parameters and the
same second-moment matrix C (ours, computed once from the same corpus; the reference's
`get_inv_cov`, which would read Wikipedia, returns its inverse). Every edit starts from the unedited
model; all four metrics of both are measured by the same editing/evaluate.py on the edited model.
Known differences that remain, by design of each: ROME's weight decay is ||δ|| / ||v₀||², ours
||δ||² / ||v₀||²; ROME stops when the whole loss is < 0.05, ours when the target NLL is; ROME samples
its templates once per process (cached), ours per call (so our per-edit time includes sampling).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

N_TEMPLATES = 21  # ROME's context templates: "{}" plus 10 of 5 tokens and 10 of 10 tokens
REFERENCE_DEFAULT = "/work/.mirror/kmeng01+rome/repo"


def extract_reference(source: Path, into: Path, device: str) -> Path:
    """Put the reference's rome/, util/ and globals.yml under `into` (from a bare git dir or a checkout)."""
    if (source / "rome" / "rome_main.py").is_file():
        subprocess.run(["cp", "-r", str(source / "rome"), str(source / "util"), str(source / "globals.yml"), str(into)], check=True)
    elif (source / "HEAD").is_file():
        archive = subprocess.run(["git", f"--git-dir={source}", "archive", "HEAD", "rome", "util", "globals.yml"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    else:
        raise SystemExit(f"--rome-repo {source}: neither a checkout of kmeng01/rome nor its git directory "
                         "(fetch it with the fetch tool: github:kmeng01/rome)")
    for name in ("compute_u.py", "compute_v.py"):  # the one change: the hard-coded CUDA device
        path = into / "rome" / name
        path.write_text(path.read_text().replace('"cuda"', repr(device)))
    return into


def import_reference(root: Path):
    """The reference's `rome` package (its util/globals.py reads globals.yml from the working directory)."""
    sys.path.insert(0, str(root))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        import rome
        import rome.compute_u
        import rome.rome_main
    finally:
        os.chdir(cwd)
    return rome


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmadapt.config import from_dict
    from mmadapt.editing.common import context_prefixes, regularised, restored
    from mmadapt.editing.evaluate import evaluate, format_table
    from mmadapt.editing.requests import parse_requests
    from mmadapt.editing.rome import RomeHParams, apply_rome
    from mmadapt.editing.stats import StatsCache
    from mmadapt.quickstart import edit as qs
    from mmadapt.quickstart import tokenizer as qs_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rome-repo", default=REFERENCE_DEFAULT, help="kmeng01/rome: a checkout or its git directory")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--v-steps", type=int, default=20, help="ROME's v_num_grad_steps (gpt2-xl hparams: 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "reference").mkdir()
        reference = import_reference(extract_reference(Path(args.rome_repo), tmp / "reference", "cpu"))
        world = qs.make_world(args.seed)
        lines = qs.corpus(world)
        # ROME samples its templates from "<|endoftext|>": the word tokenizer must know it as one token
        train_tok = qs_tokenizer.train_word_tokenizer
        with mock.patch.object(qs_tokenizer, "train_word_tokenizer",
                               lambda texts, out_dir=None, extra_tokens=(): train_tok(texts, out_dir, ["<|endoftext|>"])):
            llm_dir, knows, train_seconds = qs.train_base(tmp / "base", lines, world, args.seed)
        model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(llm_dir)
        (tmp / "corpus.txt").write_text("\n".join(lines) + "\n")
        subjects = list(world)
        random.Random(args.seed + 1).shuffle(subjects)
        single = subjects[: args.edits]
        layer, _ = qs.locate_layer(model, tok, world, single[:3], tmp)
        requests = parse_requests(qs.edit_records(world, single, subjects[args.edits:], args.seed), "rome requests")

        n_layers = model.config.n_layer
        ours_hp = from_dict(RomeHParams, {**qs.ROME, "layer": layer, "seed": args.seed, "v_steps": args.v_steps,
                                          "num_prefixes": N_TEMPLATES - 1, "prefix_length": 7, "prefix_seeds": [],
                                          "stats": {"corpus": str(tmp / "corpus.txt"), "cache_dir": str(tmp / "stats")}})
        cache = StatsCache(tmp / "stats")
        module = f"transformer.h.{layer}.mlp.c_proj"
        cov = cache.second_moments(model, tok, [module], ours_hp.stats)[module]
        inverse = torch.linalg.inv(regularised(cov, ours_hp.ridge)).float()  # the same C for both methods
        ref_hp = reference.ROMEHyperParams(
            layers=[layer], fact_token="subject_last", v_num_grad_steps=args.v_steps, v_lr=ours_hp.v_lr,
            v_loss_layer=n_layers - 1, v_weight_decay=ours_hp.v_weight_decay, clamp_norm_factor=ours_hp.clamp_norm_factor,
            kl_factor=ours_hp.kl_factor, mom2_adjustment=True, context_template_length_params=[[5, 10], [10, 10]],
            rewrite_module_tmp="transformer.h.{}.mlp.c_proj", layer_module_tmp="transformer.h.{}",
            mlp_module_tmp="transformer.h.{}.mlp", attn_module_tmp="transformer.h.{}.attn", ln_f_module="transformer.ln_f",
            lm_head_module="transformer.wte", mom2_dataset="corpus.txt", mom2_n_samples=len(lines), mom2_dtype="float32")
        reference.compute_u.get_inv_cov = lambda *a, **k: inverse  # noqa: ARG005  (what it would compute from Wikipedia)

        edited = [name for name, _ in model.named_parameters() if ".mlp." in name]
        start = time.perf_counter()
        context_prefixes(model, tok, ours_hp)  # what each of our calls spends sampling its templates
        sampling = time.perf_counter() - start
        base, _ = evaluate(model, tok, requests)
        rows: dict[str, list[dict[str, float]]] = {"ours": [], "reference": []}
        seconds: dict[str, list[float]] = {"ours": [], "reference": []}
        templates: dict[str, int] = {}
        for request in requests:  # interleaved, each edit from the unedited model
            with restored(model, edited):
                start = time.perf_counter()
                result = apply_rome(model, tok, [request], ours_hp, cache=cache)
                seconds["ours"].append(time.perf_counter() - start - result.metrics["stats_seconds"])
                templates["ours"] = len(result.details["prefixes"])
                rows["ours"].append(evaluate(model, tok, [request])[1][0])
            with restored(model, edited):
                record = {"prompt": request.prompt, "subject": request.subject, "target_new": {"str": request.target_new}}
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # the reference prints every optimisation step
                    reference.apply_rome_to_model(model, tok, [record], ref_hp)
                seconds["reference"].append(time.perf_counter() - start)
                templates["reference"] = len(reference.rome_main.CONTEXT_TEMPLATES_CACHE)
                rows["reference"].append(evaluate(model, tok, [request])[1][0])

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    table = {"unedited model": base}
    for name, label in (("reference", "ROME reference (kmeng01/rome)"), ("ours", "ours (editing/rome.py)")):
        table[f"{label}, {templates[name]} templates"] = {
            **{k: mean([r[k] for r in rows[name]]) for k in ("efficacy", "paraphrase", "neighborhood", "fluency")},
            "seconds_per_edit": mean(seconds[name])}
    print(f"GPT-2 {n_layers} layers x {model.config.n_embd} ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"trained {train_seconds:.0f} s on {len(lines)} generated facts (knows {100 * knows:.1f}%); layer {layer} "
          f"(causal tracing); {len(requests)} edits, each from the unedited model; {args.v_steps} value steps; "
          f"the same C; torch threads {torch.get_num_threads()}")
    print(format_table(table))
    fluency = {name: [round(r["fluency"], 4) for r in rows[name]] for name in rows}
    print(f"fluency per edit (unedited {base['fluency']:.4f}): ours {fluency['ours']}; reference {fluency['reference']}")
    print(f"of ours, {sampling:.3f} s per edit is sampling the {templates['ours'] - 1} prefixes again (the reference samples "
          f"once per process): {mean(seconds['ours']) - sampling:.3f} s per edit without it")
    print(f"ratio={mean(seconds['reference']) / mean(seconds['ours']):.2f}  (reference s per edit / ours)")


if __name__ == "__main__":
    main()
