"""Preference losses and logged rewards equal TRL's on fixed log-prob tensors (TRL's own code runs here).

DPO-family losses (sigmoid / cDPO, robust, hinge, IPO) run through `DPOTrainer._compute_loss` itself, with a
stand-in model that returns fixed per-token log-probs (TRL 1.x computes the loss inline, not in a function).
KTO runs through `KTOTrainer._compute_loss` the same way. SimPO and ORPO call TRL's `CPOTrainer.cpo_loss` and
`ORPOTrainer.odds_ratio_loss` on the same tensors.
Skipped when TRL is not installed (`pip install "trl>=0.20"`, the `bench` extra).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl")

from mmadapt.train.objectives.dpo import dpo_loss, ipo_loss  # noqa: E402
from mmadapt.train.objectives.orpo import orpo_loss  # noqa: E402
from mmadapt.train.objectives.simpo import simpo_loss  # noqa: E402

B, T = 4, 7


@pytest.fixture(scope="module")
def pairs():
    """Per-token log-probs of B chosen and B rejected completions of different lengths, policy and reference."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 3, 5, 2, 4, 6, 1, 3])  # [2B]: chosen rows, then rejected rows
    mask = (torch.arange(T - 1)[None, :] >= (T - 1 - lengths)[:, None]).long()  # [2B, T-1] right-aligned completion
    policy = -torch.rand(2 * B, T - 1, generator=g) * 3 * mask
    ref = -torch.rand(2 * B, T - 1, generator=g) * 3 * mask
    return SimpleNamespace(lengths=lengths, mask=mask, policy=policy, ref=ref,
                           sums=policy.sum(1), ref_sums=ref.sum(1))


class _FixedLogps(torch.nn.Module):
    """Returns the given per-token log-probs as TRL's fused LM head output (no logits needed by the loss)."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = log_probs

    def forward(self, **kwargs):
        zeros = torch.zeros_like(self.log_probs)
        return SimpleNamespace(log_probs=self.log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(self.log_probs, dtype=torch.bool))


def trl_dpo(pairs, loss_type: str, beta: float, label_smoothing: float = 0.0):
    """TRL's DPOTrainer._compute_loss on the fixed log-probs: (loss, {metric: value})."""
    from accelerate import Accelerator
    from trl import DPOTrainer

    model = _FixedLogps(pairs.policy).train()
    accel = Accelerator(cpu=True)
    trainer = SimpleNamespace(
        model=model, accelerator=accel, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    completion_mask = torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), pairs.mask], dim=1)  # [2B, T]
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": pairs.ref_sums[:B],
              "ref_rejected_logps": pairs.ref_sums[B:]}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return float(loss), {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("loss_type, beta, eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("robust", 0.3, 0.2),
                                                   ("robust", 0.3, 0.0), ("hinge", 0.4, 0.0)])
def test_dpo_losses_and_rewards_equal_trl(pairs, loss_type, beta, eps):
    trl_loss, trl_metrics = trl_dpo(pairs, loss_type, beta, eps)
    s, r = pairs.sums, pairs.ref_sums
    losses, chosen_rewards, rejected_rewards = dpo_loss(s[:B], s[B:], r[:B], r[B:], beta, eps, loss_type)
    assert float(losses.mean()) == pytest.approx(trl_loss, rel=1e-5, abs=1e-7)
    assert float(chosen_rewards.mean()) == pytest.approx(trl_metrics["rewards/chosen"], rel=1e-5, abs=1e-7)
    assert float(rejected_rewards.mean()) == pytest.approx(trl_metrics["rewards/rejected"], rel=1e-5, abs=1e-7)
    accuracy = float((chosen_rewards > rejected_rewards).float().mean())
    assert accuracy == pytest.approx(trl_metrics["rewards/accuracies"])


def test_trl_sigmoid_ignores_label_smoothing_where_ours_is_conservative_dpo(pairs):
    """TRL 1.x reads label_smoothing only for robust/exo_pair; mmadapt's sigmoid + label_smoothing is cDPO
    (TRL < 1.0's sigmoid): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)."""
    s, r, beta, eps = pairs.sums, pairs.ref_sums, 0.5, 0.2
    trl_loss, _ = trl_dpo(pairs, "sigmoid", beta, eps)
    plain, _, _ = dpo_loss(s[:B], s[B:], r[:B], r[B:], beta)
    assert float(plain.mean()) == pytest.approx(trl_loss, rel=1e-5)
    conservative, _, _ = dpo_loss(s[:B], s[B:], r[:B], r[B:], beta, eps)
    h = beta * ((s[:B] - r[:B]) - (s[B:] - r[B:]))
    torch.testing.assert_close(conservative, -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h))


def test_robust_differs_from_conservative_and_is_unbiased(pairs):
    """rDPO's expected loss under eps label noise is the clean loss; cDPO's is not."""
    s, r, eps, beta = pairs.sums, pairs.ref_sums, 0.2, 0.5
    clean, _, _ = dpo_loss(s[:B], s[B:], r[:B], r[B:], beta)
    flipped, _, _ = dpo_loss(s[B:], s[:B], r[B:], r[:B], beta, eps, "robust")
    robust, _, _ = dpo_loss(s[:B], s[B:], r[:B], r[B:], beta, eps, "robust")
    torch.testing.assert_close((1 - eps) * robust + eps * flipped, clean)
    conservative, _, _ = dpo_loss(s[:B], s[B:], r[:B], r[B:], beta, eps, "sigmoid")
    assert not torch.allclose(conservative, robust)


def test_ipo_length_normalised_by_default_equals_trl(pairs):
    from mmadapt.train.objectives.dpo import IPOConfig

    assert IPOConfig().length_normalize  # TRL always normalises IPO
    tau = 0.25
    trl_loss, trl_metrics = trl_dpo(pairs, "ipo", tau)
    s, r, n = pairs.sums, pairs.ref_sums, pairs.lengths
    losses, chosen_rewards, rejected_rewards = ipo_loss(s[:B], s[B:], r[:B], r[B:], tau, n[:B], n[B:])
    assert float(losses.mean()) == pytest.approx(trl_loss, rel=1e-5)
    # the logged rewards are tau * the summed log-ratios in both (not the normalised ones)
    assert float(chosen_rewards.mean()) == pytest.approx(trl_metrics["rewards/chosen"], rel=1e-5)
    assert float(rejected_rewards.mean()) == pytest.approx(trl_metrics["rewards/rejected"], rel=1e-5)
    summed, _, _ = ipo_loss(s[:B], s[B:], r[:B], r[B:], tau)  # length_normalize: false, the paper's notation
    assert float(summed.mean()) != pytest.approx(trl_loss, rel=1e-3)


def test_simpo_equals_trl_cpo_simpo(pairs):
    from trl.experimental.cpo import CPOTrainer

    mean = pairs.sums / pairs.lengths
    for beta, gamma in [(2.0, 1.0), (0.1, 0.5)]:  # mmadapt's defaults, then TRL CPOConfig's
        trl_self = SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, label_smoothing=0.0, loss_type="simpo",
                                   accelerator=SimpleNamespace(device="cpu"))
        theirs = CPOTrainer.cpo_loss(trl_self, mean[:B], mean[B:])
        ours = simpo_loss(mean[:B], mean[B:], beta, gamma)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b)


def test_orpo_odds_ratio_term_equals_trl_and_the_nll_span_is_stated(pairs):
    from trl.experimental.orpo import ORPOTrainer

    mean = pairs.sums / pairs.lengths
    beta, nll = 0.1, torch.tensor(1.7)
    trl_self = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device="cpu"))
    losses, chosen_rewards, rejected_rewards, _, log_odds = ORPOTrainer.odds_ratio_loss(trl_self, mean[:B], mean[B:])
    ours, ratio = orpo_loss(mean[:B], mean[B:], nll, beta)
    # TRL: loss = policy_nll_loss - losses.mean(), its NLL over prompt + completion; ours over the completion
    torch.testing.assert_close(ours, nll - losses.mean())
    torch.testing.assert_close(ratio.mean(), log_odds)
    torch.testing.assert_close(beta * mean[:B], chosen_rewards)  # the logged rewards: beta * token-mean log-probs
    assert F.logsigmoid(ratio).mean() == pytest.approx(float(losses.mean() / beta), rel=1e-5)


class _FixedKTOLogps(torch.nn.Module):
    """Per-token log-probs for the completions (input_ids of 1) and for the mismatched KL rows (input_ids of 2)."""

    def __init__(self, completion: torch.Tensor, kl: torch.Tensor) -> None:
        super().__init__()
        self.completion, self.kl = completion, kl

    def forward(self, input_ids, **kwargs):
        log_probs = self.kl if int(input_ids[0, 0]) == 2 else self.completion
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(log_probs, dtype=torch.bool))


def test_kto_loss_kl_and_rewards_equal_trl(pairs):
    from accelerate import Accelerator
    from trl import KTOTrainer

    from mmadapt.train.objectives.kto import kto_kl, kto_loss

    n = 2 * B
    desirable = torch.tensor([True, False, True, True, False, False, True, False])
    kl_policy, kl_ref = pairs.policy.flip(0) * 0.7, pairs.ref.flip(0)  # mismatched rows: other fixed log-probs
    beta, w_d, w_u = 0.3, 1.0, 1.33
    model = _FixedKTOLogps(pairs.policy, kl_policy).train()
    trainer = SimpleNamespace(
        model=model, accelerator=Accelerator(cpu=True), calculate_KL=True, precompute_ref_logps=True,
        aux_loss_enabled=False, loss_type="kto", beta=beta, desirable_weight=w_d, undesirable_weight=w_u,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    trainer._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(trainer, m, batch)
    completion_mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), pairs.mask], dim=1)
    ones = torch.ones(n, T, dtype=torch.long)
    inputs = {"input_ids": ones, "attention_mask": ones, "completion_mask": completion_mask, "label": desirable,
              "KL_input_ids": 2 * ones, "KL_attention_mask": ones, "KL_completion_mask": completion_mask,
              "ref_logps": pairs.ref_sums, "ref_KL_logps": kl_ref.sum(1)}
    trl_loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    metrics = {k: v[0] for k, v in trainer._metrics["train"].items()}
    kl = kto_kl(kl_policy.sum(1), kl_ref.sum(1))
    assert float(kl) > 0  # the KL estimate takes part (it is clamped at 0)
    losses, rewards = kto_loss(pairs.sums, pairs.ref_sums, desirable, kl, beta, w_d, w_u)
    assert float(losses.mean()) == pytest.approx(float(trl_loss), rel=1e-5)
    assert float(kl) == pytest.approx(metrics["kl"], rel=1e-5, abs=1e-7)
    assert float(rewards[desirable].mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-5)
    assert float(rewards[~desirable].mean()) == pytest.approx(metrics["rewards/rejected"], rel=1e-5)
