"""Preference objectives: formulas on hand-computed tensors, the shared forward, reference strategies, learning."""

from __future__ import annotations

import math

import pytest
import torch

from mmadapt import registry
from mmadapt.config import DataConfig, PeftConfig
from mmadapt.data.loading import load_kto, load_preference
from mmadapt.data.preference import KTOCollator, PreferenceCollator
from mmadapt.errors import ConfigError
from mmadapt.train.objectives.dpo import dpo_loss, ipo_loss
from mmadapt.train.objectives.kto import kto_kl, kto_loss
from mmadapt.train.objectives.logprobs import pair_logps, sequence_logps
from mmadapt.train.objectives.orpo import log1mexp, orpo_loss
from mmadapt.train.objectives.reference import AdaptersOffReference, FrozenCopyReference, PrecomputedReference
from mmadapt.train.objectives.simpo import simpo_loss
from pref_utils import build_model, colour_pairs, kto_samples, make_tokenizer, text_model_spec, vision_model_spec, \
    write_images, write_jsonl


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- formulas by hand
def test_sequence_logps_sums_supervised_tokens_only():
    logits = torch.zeros(1, 4, 5)
    logits[0, 1, 2] = math.log(3.0)  # position 1 predicts token 2 with p = 3 / 7
    labels = torch.tensor([[-100, 4, 2, -100]])  # supervised: token 4 (from position 0) and token 2 (from 1)
    result = sequence_logps(logits, labels)
    assert result.tokens.tolist() == [2]
    assert result.logps.item() == pytest.approx(math.log(1 / 5) + math.log(3 / 7), rel=1e-6)
    assert result.mean_logps.item() == pytest.approx((math.log(1 / 5) + math.log(3 / 7)) / 2, rel=1e-6)


def test_dpo_sigmoid_and_conservative():
    # h = (-1 - -1.5) - (-2 - -1.5) = 1, beta = 0.5
    losses, chosen_r, rejected_r = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5)
    assert losses.item() == pytest.approx(-math.log(sig(0.5)), rel=1e-9)
    assert (chosen_r.item(), rejected_r.item()) == pytest.approx((0.25, -0.25))
    smoothed, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * -math.log(sig(0.5)) + 0.1 * -math.log(sig(-0.5)), rel=1e-9)


def test_ipo_squared_margin():
    losses, chosen_r, _ = ipo_loss(t(-1.0, -1.0), t(-2.0, -1.0), t(-1.5, -1.0), t(-1.5, -1.0), tau=0.25)
    # pair 1: h = 1, target 1 / (2 * 0.25) = 2 -> (1 - 2)^2; pair 2: h = 0 -> 4
    assert losses.tolist() == pytest.approx([1.0, 4.0])
    assert chosen_r[0].item() == pytest.approx(0.25 * 0.5)


def test_simpo_length_normalised_margin():
    losses, chosen_r, rejected_r = simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=1.0)
    assert losses.item() == pytest.approx(-math.log(sig(2 * -1.0 - 2 * -2.0 - 1.0)), rel=1e-9)
    assert (chosen_r.item(), rejected_r.item()) == pytest.approx((-2.0, -4.0))


def test_orpo_odds_ratio_plus_nll():
    def log_odds(lp: float) -> float:
        return lp - math.log(1 - math.exp(lp))

    ratio = log_odds(-0.5) - log_odds(-1.0)
    loss, got_ratio = orpo_loss(t(-0.5), t(-1.0), torch.tensor(2.0, dtype=torch.float64), beta=0.1)
    assert got_ratio.item() == pytest.approx(ratio, rel=1e-9)
    assert loss.item() == pytest.approx(2.0 + 0.1 * -math.log(sig(ratio)), rel=1e-9)


@pytest.mark.parametrize("x", [-1e-6, -1e-3, -0.5, -0.69, -0.7, -3.0, -40.0])
def test_log1mexp_is_accurate(x):
    assert log1mexp(t(x)).item() == pytest.approx(math.log(-math.expm1(x)), rel=1e-9)


def test_kto_desirable_and_undesirable():
    # r = [1, -0.5]; z0 = 0.2; beta = 0.5; lambda_D = 1, lambda_U = 2
    losses, rewards = kto_loss(t(-1.0, -1.0), t(-2.0, -0.5), torch.tensor([True, False]), 0.2, beta=0.5,
                               desirable_weight=1.0, undesirable_weight=2.0)
    assert losses.tolist() == pytest.approx([1 - sig(0.5 * (1 - 0.2)), 2 * (1 - sig(0.5 * (0.2 + 0.5)))])
    assert rewards.tolist() == pytest.approx([0.5, -0.25])
    assert kto_kl(t(-1.0, -2.0), t(-2.0, -1.5)).item() == pytest.approx(0.25)  # mean(1, -0.5)
    assert kto_kl(t(-3.0), t(-1.0)).item() == 0.0  # clamped at zero


def test_objective_configs_are_validated():
    with pytest.raises(ConfigError, match="label_smoothing"):
        registry.build("objective", {"name": "dpo", "label_smoothing": 0.7})
    with pytest.raises(ConfigError, match="objective.bta"):
        registry.build("objective", {"name": "dpo", "bta": 0.1}, where="objective")
    with pytest.raises(ConfigError, match="reference"):
        registry.build("objective", {"name": "kto", "reference": "twin"})
    assert registry.build("objective", {"name": "simpo", "gamma": 0.5}).config.gamma == 0.5


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    tok = make_tokenizer(root / "tok")
    train, _ = colour_pairs()
    small = train[:16]
    return {"root": root, "tok": tok, "pairs": write_jsonl(root / "pairs.jsonl", small),
            "kto": write_jsonl(root / "kto.jsonl", kto_samples(small))}


def pair_batch(model, task, n=16):
    examples, _ = load_preference(str(task["pairs"]), model.tokenisation_spec(), DataConfig(format="preference"), "d")
    return examples[:n], PreferenceCollator(model.tokenisation_spec())(examples[:n])


def kto_batch(model, task):
    examples, _ = load_kto(str(task["kto"]), model.tokenisation_spec(), DataConfig(format="kto"), "d")
    return examples, KTOCollator(model.tokenisation_spec())(examples)


# ----------------------------------------------------------------------------- the shared forward
def test_concatenated_forward_equals_one_row_at_a_time(task):
    model = build_model(text_model_spec(task["tok"]))
    examples, batch = pair_batch(model, task, n=4)
    chosen, rejected = pair_logps(model, batch)
    for i, example in enumerate(examples):
        for ids, got in ((example.chosen_ids, chosen.logps[i]), (example.rejected_ids, rejected.logps[i])):
            row = torch.tensor([example.prompt_ids + ids])
            labels = torch.tensor([[-100] * len(example.prompt_ids) + ids])
            alone = sequence_logps(model(input_ids=row).logits, labels).logps[0]
            assert got.item() == pytest.approx(alone.item(), abs=1e-5)


def test_media_encoded_once_per_pair_and_logps_match(task, tmp_path):
    model = build_model(vision_model_spec(task["tok"]))
    names = write_images(tmp_path, 3)
    write_jsonl(tmp_path / "mm.jsonl", [
        {"prompt": f"<image>\nwhat colour is the {obj} ?", "image": name, "chosen": "red .", "rejected": "blue ."}
        for obj, name in zip(["apple", "plum", "kiwi"], names)])
    examples, _ = load_preference(str(tmp_path / "mm.jsonl"), model.tokenisation_spec(), DataConfig(format="preference"), "d")
    batch = PreferenceCollator(model.tokenisation_spec())(examples)
    assert batch["media"]["image"].shape[0] == 3  # one item per pair, not per row
    calls = []
    handle = model.encoders["image"].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    chosen, rejected = pair_logps(model, batch)
    handle.remove()
    assert calls == [3]
    # Reference: the plain MultimodalLM forward with the media given twice (once per row).
    media = {"image": torch.cat([batch["media"]["image"]] * 2)}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media).logits
    expected = sequence_logps(logits, batch["completion_labels"]).logps
    assert torch.allclose(torch.cat([chosen.logps, rejected.logps]), expected, atol=1e-5)


def test_ddp_wrapped_model_goes_through_its_forward(task, tmp_path):
    """Under DDP the media are given once per row (only the wrapper's forward syncs gradients): same log-probs."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = build_model(vision_model_spec(task["tok"]))
    names = write_images(tmp_path, 2)
    write_jsonl(tmp_path / "mm.jsonl", [{"prompt": "<image>\nwhat colour is the apple ?", "image": name,
                                         "chosen": "red .", "rejected": f"{c} ."} for name, c in zip(names, ["blue", "lime"])])
    examples, _ = load_preference(str(tmp_path / "mm.jsonl"), model.tokenisation_spec(), DataConfig(format="preference"), "d")
    batch = PreferenceCollator(model.tokenisation_spec())(examples)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        chosen, rejected = pair_logps(wrapped, batch)
        (chosen.logps.sum() - rejected.logps.sum()).backward()  # the reducer accepts the step
    finally:
        dist.destroy_process_group()
    plain_chosen, plain_rejected = pair_logps(model, batch)
    assert torch.allclose(chosen.logps, plain_chosen.logps, atol=1e-5)
    assert torch.allclose(rejected.logps, plain_rejected.logps, atol=1e-5)


# ----------------------------------------------------------------------------- reference strategies
def _sums(model, batch):
    chosen, rejected = pair_logps(model, batch)
    return chosen.logps, rejected.logps


def test_reference_strategies_agree_and_stay_fixed(task):
    from mmadapt.train.peft import apply_peft

    model = build_model(text_model_spec(task["tok"]))
    apply_peft(model, PeftConfig(r=4, alpha=8, dropout=0.0))
    examples, batch = pair_batch(model, task)
    copy_ref, off_ref, cached = FrozenCopyReference(model), AdaptersOffReference(), PrecomputedReference()
    cached.compute(model, [batch], _sums)
    before = [torch.cat(r(model, batch, _sums)) for r in (copy_ref, off_ref, cached)]
    with torch.no_grad():  # an adapter update: the policy moves, every reference stays where it was
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)
    policy = torch.cat(_sums(model, batch)).detach()
    after = [torch.cat(r(model, batch, _sums)) for r in (copy_ref, off_ref, cached)]
    for b, a in zip(before, after):
        assert torch.allclose(b, before[0], atol=1e-5) and torch.allclose(a, before[0], atol=1e-5)
    assert (policy - before[0]).abs().max() > 1e-2
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # switched back on


def test_auto_reference_choice(task):
    from mmadapt.train.freezing import apply_freezing
    from mmadapt.train.peft import apply_peft

    full = build_model(text_model_spec(task["tok"]))
    dpo = registry.build("objective", {"name": "dpo"})
    dpo.prepare(full)
    assert isinstance(dpo.reference, FrozenCopyReference)
    vision = build_model(vision_model_spec(task["tok"]))
    apply_peft(vision, PeftConfig(r=4))
    apply_freezing(vision, ["llm"])  # adapters only
    dpo.prepare(vision)
    assert isinstance(dpo.reference, AdaptersOffReference)
    apply_freezing(vision, ["llm", "connectors"])  # the connector would drift: a copy is exact
    dpo.prepare(vision)
    assert isinstance(dpo.reference, FrozenCopyReference)
    with pytest.raises(ConfigError, match="adapters_off needs adapters"):
        registry.build("objective", {"name": "dpo", "reference": "adapters_off"}).prepare(full)


def test_precomputed_reference_names_missing_samples(task):
    model = build_model(text_model_spec(task["tok"]))
    examples, batch = pair_batch(model, task)
    dpo = registry.build("objective", {"name": "dpo", "reference": "precomputed"})
    collator = PreferenceCollator(model.tokenisation_spec())
    dpo.prepare(model, examples[:4], collator)
    dpo.loss(model, collator(examples[:4]))
    with pytest.raises(ConfigError, match="precomputed has no reference log-probs"):
        dpo.loss(model, batch)


# ----------------------------------------------------------------------------- learning
OBJECTIVES = [
    ({"name": "dpo"}, "preference"),
    ({"name": "dpo", "label_smoothing": 0.1}, "preference"),
    ({"name": "ipo", "tau": 0.5}, "preference"),
    ({"name": "simpo"}, "preference"),
    ({"name": "orpo", "beta": 5.0}, "preference"),  # a strong odds-ratio term: 20 steps only
    ({"name": "kto"}, "kto"),
]


def _batch(model, task, fmt):
    return kto_batch(model, task)[1] if fmt == "kto" else pair_batch(model, task)[1]


@pytest.mark.parametrize("spec,fmt", OBJECTIVES, ids=lambda v: str(v.get("name", "")) + str(v.get("label_smoothing", ""))
                         if isinstance(v, dict) else "")
def test_parameters_change_after_a_step(task, spec, fmt):
    model = build_model(text_model_spec(task["tok"]))
    objective = registry.build("objective", spec)
    batch = _batch(model, task, fmt)
    if hasattr(objective, "prepare"):
        objective.prepare(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers." in n}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss, metrics = objective.loss(model, batch)
    loss.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(before), f"unchanged: {sorted(set(before) - set(changed))}"
    assert all(math.isfinite(v) for v in metrics.values())
    reference = getattr(getattr(objective, "reference", None), "model", None)
    if reference is not None:  # the frozen copy did not move
        for n, p in reference.named_parameters():
            if n in before:
                assert torch.equal(p, before[n])


def _pair_accuracy(model, objective, task, fmt) -> float:
    """Fraction of pairs whose chosen completion has the higher implicit reward."""
    model.eval()
    with torch.no_grad():
        if fmt == "kto":  # rows alternate chosen / rejected (kto_samples); rewards = beta * (policy - ref)
            batch = kto_batch(model, task)[1]
            policy = objective._sums(model, batch)[0]
            ref = objective.reference(model, batch, objective._sums)[0]
            rewards = policy - ref
            return (rewards[0::2] > rewards[1::2]).float().mean().item()
        _, metrics = objective.loss(model, pair_batch(model, task)[1])
    model.train()
    return metrics["preference_accuracy"]


@pytest.mark.parametrize("spec,fmt", OBJECTIVES, ids=lambda v: str(v.get("name", "")) + str(v.get("label_smoothing", ""))
                         if isinstance(v, dict) else "")
def test_preference_accuracy_moves(task, spec, fmt):
    torch.manual_seed(0)
    model = build_model(text_model_spec(task["tok"]))
    objective = registry.build("objective", spec)
    if hasattr(objective, "prepare"):
        objective.prepare(model)
    batch = _batch(model, task, fmt)
    before = _pair_accuracy(model, objective, task, fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(20):
        loss, _ = objective.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = _pair_accuracy(model, objective, task, fmt)
    assert after >= 0.9 and after > before, (before, after)


@pytest.mark.parametrize("objective,fmt", [({"name": "kto"}, "kto"), ({"name": "dpo", "reference": "precomputed"}, "preference")],
                         ids=["kto", "dpo-precomputed"])
def test_through_the_trainer(task, tmp_path, objective, fmt):
    """The one trainer runs the objective: its collator, prepare() over train + eval, metrics in metrics.json."""
    import json

    from mmadapt.run_config import load_run
    from mmadapt.train.run import train

    data = str(task["kto"] if fmt == "kto" else task["pairs"])
    config = load_run({"model": text_model_spec(task["tok"]), "objective": objective, "output_dir": str(tmp_path / "run"),
                       "data": {"train": data, "eval": data, "format": fmt},
                       "training": {"max_steps": 6, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0,
                                    "train_modules": ["llm"], "logging_steps": 3}})
    metrics = train(config)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["eval_rewards_margin"] == pytest.approx(metrics["eval_rewards_margin"])
    assert metrics["eval_rewards_margin"] > 0 and "train_rewards_chosen" in saved
    if fmt == "kto":
        assert "eval_kl" in saved
    else:
        assert metrics["eval_preference_accuracy"] > 0.5
