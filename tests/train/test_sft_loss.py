"""The SFT loss is the mean token NLL over shifted labels (position t predicts label t+1), as TRL's SFT reports.

Pinned against a hand computation from the model's own logits, through MMTrainer's real training
step (one step at learning rate 0, so the logits before and after agree): `format: text` (every token
supervised, so counting position 0 would divide by L instead of L - 1) and a multimodal conversation.
"""

from __future__ import annotations

import math

import pytest
import torch
from pref_utils import build_model, make_tokenizer, text_model_spec, vision_model_spec, write_images, write_jsonl

from mmadapt.config import DataConfig
from mmadapt.data.loading import load_data
from mmadapt.train.objectives.sft import SFTConfig, SFTObjective


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("sft_tok"))


def hand_shifted_mean(model, batch) -> float:
    """sum over rows b and positions t >= 1 with a label of -log softmax(logits[b, t-1])[labels[b, t]], / their count."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       media=batch.get("media")).logits.double()
    labels = batch["labels"]
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            target = int(labels[b, t])
            if target == -100:
                continue
            total -= float(torch.log_softmax(logits[b, t - 1], dim=-1)[target])
            count += 1
    assert count > 0
    return total / count


def one_step_logged_loss(model, train, collator, tmp_path, batch_size: int) -> float:
    from transformers import TrainingArguments

    from mmadapt.train.trainer import MMTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=batch_size, max_steps=1,
                             learning_rate=0.0, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no")
    trainer = MMTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                        objective=SFTObjective(SFTConfig()))
    trainer.train()
    return next(row["loss"] for row in trainer.state.log_history if "loss" in row)


def _data(tmp_path, fmt: str, records: list[dict]) -> DataConfig:
    return DataConfig(format=fmt, train=str(write_jsonl(tmp_path / "train.jsonl", records)), max_length=64)


def test_text_sft_loss_is_the_shifted_mean(tok, tmp_path):
    torch.manual_seed(0)
    model = build_model(text_model_spec(tok))
    records = [{"text": "the apple is red ."}, {"text": "what colour is the lime ? the lime is green ."}]
    train, _, collator, _ = load_data(model.tokenisation_spec(), _data(tmp_path, "text", records))
    batch = collator(train)
    assert (batch["labels"][:, 0] != -100).all()  # text: position 0 carries a label no position predicts
    expected = hand_shifted_mean(model, batch)
    loss, metrics = SFTObjective(SFTConfig()).loss(model, batch)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert metrics["supervised_tokens"] == int((batch["labels"][:, 1:] != -100).sum())
    logged = one_step_logged_loss(model, train, collator, tmp_path, batch_size=len(train))
    assert logged == pytest.approx(expected, rel=1e-4)
    unshifted = expected * int((batch["labels"][:, 1:] != -100).sum()) / int((batch["labels"] != -100).sum())
    assert not math.isclose(logged, unshifted, rel_tol=1e-3)  # the old (L-1)/L-scaled figure


def test_multimodal_sft_loss_is_the_shifted_mean(tok, tmp_path):
    torch.manual_seed(0)
    model = build_model(vision_model_spec(tok))
    names = write_images(tmp_path, 2)
    records = [{"images": [names[0]], "conversations": [{"from": "human", "value": "<image> describe shape"},
                                                        {"from": "gpt", "value": "the plum is purple ."}]},
               {"images": [names[1]], "conversations": [{"from": "human", "value": "what colour is the kiwi ? <image>"},
                                                        {"from": "gpt", "value": "green ."}]}]
    train, _, collator, _ = load_data(model.tokenisation_spec(), _data(tmp_path, "conversations", records))
    batch = collator(train)
    assert batch.get("media")
    expected = hand_shifted_mean(model, batch)
    loss, _ = SFTObjective(SFTConfig()).loss(model, batch)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert one_step_logged_loss(model, train, collator, tmp_path, batch_size=len(train)) == pytest.approx(expected, rel=1e-4)
