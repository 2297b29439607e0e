"""Optimiser and learning-rate schedule of pre-training (spec section 7).

Official recipe (`configs/experiment.py:Pretrain`, `utils/train/schedules.py`): Adam with β = 0.9/0.999,
ε = 1e-7, no weight decay, no clipping; the rate rises linearly from 0 to 1e-4 over 5000 steps, then
follows a half cosine from 1e-4 down to 5e-5 at step 500k (`StepCosineLearningRateWithLinearWarmup` with
levels (1e-4, 5e-5) at steps (5000, 500000)).

AdamW is the option for weight decay. Its decay here is torch's (θ -= lr·wd·θ); the official `AdamW`
config (tf-addons) applies wd·θ without the learning-rate factor, so equal `weight_decay` values are
not equal decays.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vatt.train.config import OptimConfig


def learning_rate(step: int, cfg: OptimConfig) -> float:
    """The rate used by optimiser step `step` (0-based): linear warm-up, then cosine to `final_lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    return cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; with decay, only Linear and Conv weights decay (not biases, norms, positional
    tables, AGG tokens or embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if weight_decay == 0:
        return [{"params": params, "weight_decay": 0.0}]
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}
    return [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig) -> float:
    """Set the rate of every group for `step`. The schedule is a pure function of (step, config), so the
    step alone restores it on resume, and a resumed run may extend `total_steps`."""
    lr = learning_rate(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
