"""TRL's hinge and robust DPO losses as `loss_type` options of the dpo objective, and the IPO/DPO conventions."""

from __future__ import annotations

import pytest
import torch

from mmadapt import registry
from mmadapt.errors import ConfigError
from mmadapt.train.objectives.dpo import dpo_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_hinge_and_robust_formulas():
    beta, eps = 0.5, 0.1
    h = (-1.0 - -1.5) - (-2.0 - -1.5)  # 1.0
    hinge, chosen, rejected = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta, 0.0, "hinge")
    assert hinge.item() == pytest.approx(max(0.0, 1 - beta * h))
    assert (chosen.item(), rejected.item()) == pytest.approx((beta * 0.5, beta * -0.5))
    far, _, _ = dpo_loss(t(0.0), t(-10.0), t(-1.0), t(-1.0), beta, 0.0, "hinge")
    assert far.item() == 0.0  # past the margin: no gradient, unlike the sigmoid loss
    robust, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta, eps, "robust")
    ls = torch.nn.functional.logsigmoid
    expected = (-(1 - eps) * ls(t(beta * h)) + eps * ls(t(-beta * h))) / (1 - 2 * eps)
    assert robust.item() == pytest.approx(expected.item())


def test_loss_type_is_a_validated_dpo_option():
    assert registry.build("objective", {"name": "dpo", "loss_type": "hinge"}).config.loss_type == "hinge"
    robust = registry.build("objective", {"name": "dpo", "loss_type": "robust", "label_smoothing": 0.1})
    assert robust.config.label_smoothing == 0.1
    assert registry.build("objective", {"name": "dpo"}).config.loss_type == "sigmoid"
    with pytest.raises(ConfigError, match="loss_type"):
        registry.build("objective", {"name": "dpo", "loss_type": "exo_pair"})
    with pytest.raises(ConfigError, match="label_smoothing has no effect with loss_type hinge"):
        registry.build("objective", {"name": "dpo", "loss_type": "hinge", "label_smoothing": 0.1})
    assert registry.build("objective", {"name": "ipo"}).config.length_normalize  # as TRL
