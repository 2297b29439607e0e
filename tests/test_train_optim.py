"""vatt.train.optim: the official schedule and optimiser settings."""
import math

import pytest
import torch
from torch import nn

from vatt.train.config import OptimConfig
from vatt.train.optim import build_optimizer, learning_rate, param_groups, set_learning_rate


def official_schedule(step: int) -> float:
    # `StepCosineLearningRateWithLinearWarmup` with levels (1e-4, 5e-5) at steps (5000, 500000).
    if step < 5000:
        return 0.0 + step / 5000 * (1e-4 - 0.0)
    return (1e-4 - 5e-5) * (math.cos(math.pi * (step - 5000) / (500000 - 5000)) + 1.0) / 2.0 + 5e-5


@pytest.mark.parametrize("step", [0, 1, 2500, 4999, 5000, 5001, 100_000, 252_500, 499_999, 500_000])
def test_default_schedule_matches_official(step):
    assert learning_rate(step, OptimConfig()) == pytest.approx(official_schedule(step), rel=1e-12, abs=1e-15)


def test_schedule_holds_final_rate_after_total_steps():
    cfg = OptimConfig(lr=1e-3, final_lr=1e-4, warmup_steps=0, total_steps=10)
    assert learning_rate(0, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, cfg) == learning_rate(25, cfg) == pytest.approx(1e-4)


def test_adam_defaults_and_set_learning_rate():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig())
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-7 and group["weight_decay"] == 0.0
    assert set_learning_rate(opt, 2500, OptimConfig()) == pytest.approx(5e-5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)


def test_adamw_decays_only_weight_matrices():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(10, 4))
    model.agg = nn.Parameter(torch.zeros(4))
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 5
    opt = build_optimizer(model, OptimConfig(optimizer="adamw", weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)


def test_frozen_parameters_are_left_out():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    groups = param_groups(model, 0.0)
    assert [id(p) for p in groups[0]["params"]] == [id(model.weight)]
