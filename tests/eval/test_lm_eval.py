"""The lm-eval adapter offline: local task YAMLs over local data; on a plain HF checkpoint the `mmadapt` model's
numbers equal lm-eval's own `hf` model's (log-likelihood multiple choice, rolling perplexity, generation)."""

from __future__ import annotations

import json

import pytest

from tests.eval.helpers import save_hf

lm_eval = pytest.importorskip("lm_eval")

WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "one", "two", "three"]


def write_tasks(folder):
    data = folder / "data.jsonl"
    rows = [{"question": f"the {w} shape is", "choices": [WORDS[(i + 1) % 10], WORDS[(i + 3) % 10], w], "label": i % 3,
             "text": f"the quick brown fox jumps over the lazy {w} dog", "answer": w} for i, w in enumerate(WORDS)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "mm_choice.yaml").write_text(
        "task: mm_choice\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "mm_ppl.yaml").write_text(
        "task: mm_ppl\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n")
    (folder / "mm_gen.yaml").write_text(
        "task: mm_gen\n" + common + "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def test_mmadapt_model_equals_lm_eval_hf_model(tokenizer_dir, tmp_path):
    import mmadapt.eval.lm_eval  # noqa: F401 (registers the `mmadapt` model)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_dir = save_hf(tokenizer_dir, tmp_path / "hf-model", seed=0)
    (tmp_path / "tasks").mkdir()
    write_tasks(tmp_path / "tasks")
    manager = TaskManager(include_path=str(tmp_path / "tasks"))
    results = {}
    for name in ("hf", "mmadapt"):
        out = simple_evaluate(model=name, model_args=f"pretrained={model_dir}", tasks=["mm_choice", "mm_ppl", "mm_gen"],
                              task_manager=manager, batch_size=4, device="cpu", log_samples=True)
        results[name] = out
    for task in ("mm_choice", "mm_ppl", "mm_gen"):
        ours = {k: v for k, v in results["mmadapt"]["results"][task].items() if isinstance(v, float)}
        theirs = {k: v for k, v in results["hf"]["results"][task].items() if isinstance(v, float)}
        assert ours.keys() == theirs.keys() and ours, task
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), (task, key)
    # the per-item log-likelihoods agree too, not just the means
    ours = [s["resps"] for s in results["mmadapt"]["samples"]["mm_choice"]]
    theirs = [s["resps"] for s in results["hf"]["samples"]["mm_choice"]]
    for a, b in zip(ours, theirs):
        for (la, ga), (lb, gb) in zip([r[0] for r in a], [r[0] for r in b]):
            assert la == pytest.approx(lb, abs=1e-4) and ga == gb
    # texts longer than the context: the same rolling windows as lm-eval's (max_length 4 tokens)
    short = {name: simple_evaluate(model=name, model_args=f"pretrained={model_dir},max_length=4", tasks=["mm_ppl"],
                                   task_manager=manager, batch_size=4, device="cpu")["results"]["mm_ppl"]
             for name in ("hf", "mmadapt")}
    assert short["mmadapt"]["word_perplexity,none"] == pytest.approx(short["hf"]["word_perplexity,none"], rel=1e-4)
    assert short["mmadapt"]["word_perplexity,none"] != pytest.approx(results["hf"]["results"]["mm_ppl"]["word_perplexity,none"])
    # generations: equal, except that ours stops at the tokenizer's EOS token where `hf` (which decodes with special
    # tokens skipped, losing the EOS it meant to stop at) runs on to the batch's end
    gens = [s["resps"][0][0] for s in results["mmadapt"]["samples"]["mm_gen"]]
    hf_gens = [s["resps"][0][0] for s in results["hf"]["samples"]["mm_gen"]]
    assert all(h.startswith(g) for g, h in zip(gens, hf_gens))
    assert sum(g == h for g, h in zip(gens, hf_gens)) >= len(gens) // 2
