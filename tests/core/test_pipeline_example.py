"""examples/pipeline: SFT -> DPO -> merge -> edit -> RAG attach, each step started from the last by init_from alone
(or by naming its directory), run through the real CLI on a shrunken copy of the example's configs."""

import json
from pathlib import Path

from mmadapt.cli import main
from mmadapt.lineage import read_manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipeline"


def test_the_pipeline_example_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "p"
    small = ["training.epochs=1", "training.batch_size=8", "training.threads=1"]
    assert main(["train", str(EXAMPLES / "1_sft.yaml"), "--set", f"output_dir={out}/sft",
                 "--set", f"model.llm.tokenizer={out}/data/tokenizer", "--set", f"data.generate.out={out}/data",
                 "--set", "data.generate.n_train=32", "--set", "data.generate.n_eval=8",
                 "--set", f"data.train={out}/data/train.jsonl", "--set", f"data.eval={out}/data/eval.jsonl", *sum(
                     (["--set", s] for s in small), [])]) == 0
    assert main(["train", str(EXAMPLES / "2_dpo.yaml"), "--set", f"output_dir={out}/dpo",
                 "--set", f"model.init_from={out}/sft", "--set", f"data.generate.out={out}/pairs",
                 "--set", f"data.generate.data={out}/data", "--set", f"data.train={out}/pairs/train.jsonl",
                 "--set", f"data.eval={out}/pairs/eval.jsonl", *sum((["--set", s] for s in small), [])]) == 0
    dpo_manifest = read_manifest(out / "dpo")
    assert any(p.get("kind") == "training" for p in dpo_manifest["parents"])  # the SFT run, embedded
    assert (out / "dpo" / "llm_adapter" / "adapter_config.json").is_file()
    assert main(["merge", str(EXAMPLES / "3_merge.yaml"), "--out", str(out / "merged"),
                 "--set", f"models.0.model={out}/sft", "--set", f"models.1.model={out}/dpo"]) == 0
    assert main(["edit", "apply", "--model", str(out / "merged"), "--edits", str(EXAMPLES / "4_edits.jsonl"),
                 "--method", "rome", "--out", str(out / "edited"), "--corpus", str(EXAMPLES / "5_docs.jsonl"),
                 "--stats-dir", str(tmp_path / "stats"), "--allow-weak"]) == 0
    assert json.loads((out / "edited" / "edit" / "edit.json").read_text())["requests"][0]["subject"] == "shape"
    assert main(["rag", "build", str(EXAMPLES / "5_docs.jsonl"), "--out", str(out / "index")]) == 0
    capsys.readouterr()
    assert main(["rag", "ask", str(out / "index"), "how many shapes can an image show?",
                 "--model", str(out / "edited"), "--max-new-tokens", "4"]) == 0
    assert main(["lineage", str(out / "edited"), "--verify"]) == 0
    chain = capsys.readouterr().out
    assert all(kind in chain for kind in ("edit", "merge", "training"))
