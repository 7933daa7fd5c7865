"""`mmadapt ui` in real headless chromium: every tab loads, a chat with an uploaded image answers with
citations, a tiny training run started from the page finishes and its loss plot appears."""

from __future__ import annotations

import yaml
from PIL import Image

from tests.ui.conftest import needs_chromium

pytestmark = needs_chromium
TABS = ["chat", "train", "evaluate", "merge", "edit", "lineage"]


def test_every_tab_loads(page, tmp_path):
    for tab in TABS:
        page.click(f"#tab-{tab}")
        assert page.is_visible(f"section#{tab}")
        assert all(not page.is_visible(f"section#{other}") for other in TABS if other != tab)
        page.screenshot(path=str(tmp_path / f"{tab}.png"))
    # the Merge tab shows the YAML it will run, following the fields
    page.click("#tab-merge")
    page.fill("#m-models", "a\nb")
    page.select_option("#m-method", "ties")
    merge = yaml.safe_load(page.input_value("#m-yaml"))
    assert merge["method"] == "ties" and [m["model"] for m in merge["models"]] == ["a", "b"]


def test_chat_with_image_answers_with_citations(page, tmp_path, model_dir, index_dir):
    image = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (220, 20, 20)).save(image)
    page.fill("#c-model", str(model_dir))
    page.fill("#c-index", str(index_dir))
    page.set_input_files("#c-file", str(image))
    page.fill("#c-msg", "which planet is the biggest ?")
    page.click("#c-send")
    page.wait_for_function("document.getElementById('c-answer').textContent != '...'", timeout=60_000)
    answer = page.text_content("#c-answer")
    assert answer and not answer.startswith("Error"), answer
    assert page.locator("#c-cites tr.cite").count() >= 1
    assert "corpus/astronomy.txt" in page.text_content("#c-cites")
    page.screenshot(path=str(tmp_path / "chat.png"))


def test_training_from_the_page_finishes_with_a_loss_plot(page, tmp_path):
    from mmadapt.quickstart.tiny import tiny_llm_config, tiny_vit_encoder

    data = tmp_path / "data"
    config = {
        "seed": 0, "output_dir": str(tmp_path / "run"),
        "model": {"llm": {"config": tiny_llm_config("llama", hidden=32, heads=2), "tokenizer": f"{data}/tokenizer"},
                  "encoders": {"image": tiny_vit_encoder(image_size=16, patch_size=8, width=32, depth=1)},
                  "connectors": {"image": {"name": "mlp"}}},
        "data": {"generate": {"name": "shapes", "out": str(data), "n_train": 32, "n_eval": 8, "image_size": 16},
                 "train": f"{data}/train.jsonl", "eval": f"{data}/eval.jsonl", "max_length": 48},
        "training": {"batch_size": 8, "lr": 3e-3, "logging_steps": 1, "max_steps": 6, "threads": 1},
    }
    page.click("#tab-train")
    page.fill("#t-yaml", yaml.safe_dump(config))
    page.click("#t-start")
    page.wait_for_function("document.getElementById('t-state').textContent.startsWith('finished')"
                           " || document.getElementById('t-state').textContent.startsWith('failed')", timeout=90_000)
    assert page.text_content("#t-state") == "finished", page.text_content("#t-out")
    page.wait_for_function("document.getElementById('t-metrics').textContent.length > 2", timeout=10_000)
    assert int(page.get_attribute("#t-plot", "data-points")) >= 3
    assert (tmp_path / "run" / "metrics.json").exists()
    page.screenshot(path=str(tmp_path / "train.png"))


def test_edit_table_becomes_the_edits_file_of_apply(page, ui_workdir):
    import json

    page.click("#tab-edit")
    page.click("#d-add")
    cells = page.locator("#d-table tr:last-child td")
    for i, text in enumerate(["The Louvre", "{} is located in", "Rome"]):
        cells.nth(i).fill(text)
    page.fill("#d-args", f"apply --model {ui_workdir}/no-such-model --out {ui_workdir}/edited")
    page.click("#d-run")
    page.wait_for_function("document.getElementById('d-state').textContent.startsWith('failed')", timeout=60_000)
    rows = [json.loads(line) for line in (ui_workdir / ".mmadapt-ui-edits.jsonl").read_text().splitlines()]
    assert [r["subject"] for r in rows] == ["Paris", "The Louvre"] and rows[1]["target_new"] == "Rome"
    assert "no-such-model" in page.text_content("#d-log")  # the CLI's own message reaches the page


def test_edit_trace_shows_its_heat_map_and_lineage_shows_the_chain(page, ui_workdir, model_dir):
    from mmadapt.quickstart.tokenizer import train_word_tokenizer
    from tests.tiny import causal_lm

    lm = ui_workdir / "tiny-lm"
    tokenizer = train_word_tokenizer(["the tower of alba is in paris ."], lm)
    causal_lm("gpt2", len(tokenizer), hidden=64).save_pretrained(lm)
    page.click("#tab-edit")
    page.fill("#d-args", f"trace --model {lm} --prompt {{}} --subject alba --samples 2 --out heat.png")
    page.click("#d-run")
    page.wait_for_function("document.getElementById('d-state').textContent == 'finished'", timeout=120_000)
    page.wait_for_function("document.getElementById('d-heat').naturalWidth > 0", timeout=30_000)
    assert (ui_workdir / "heat.png").is_file()
    page.screenshot(path=str(ui_workdir / "edit-trace.png"))

    page.click("#tab-lineage")
    page.fill("#l-dir", str(model_dir))
    page.click("#l-show")
    page.wait_for_function("document.querySelectorAll('#l-table tr').length >= 2", timeout=60_000)
    assert "model" in page.text_content("#l-table")
