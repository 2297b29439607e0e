"""Optimisers of fine-tuning (spec section 7): Keras-style SGD with momentum, or Adam / AdamW.

The official fine-tuning optimiser is `tf.keras.optimizers.SGD(momentum=0.9)`, whose update folds the
learning rate into the velocity:  v <- m v - lr_t g;  w <- w + v  (Nesterov: w <- w + m v - lr_t g).
`torch.optim.SGD` instead accumulates raw gradients and scales the sum by today's rate
(b <- m b + g; w <- w - lr_t b). The two agree at a constant rate but not during the 2,500-step warm-up
or the cosine decay, so `KerasSGD` implements the Keras form. The learning-rate schedule is
`vatt.engine.optim.learning_rate` (linear warm-up, then cosine to `final_lr`), a function of the step.
"""
from __future__ import annotations

import torch
from torch import nn

from vatt.engine.optim import param_groups


class KerasSGD(torch.optim.Optimizer):
    """SGD with momentum as Keras computes it (see the module docstring).

    `weight_decay` is decoupled, as the official `SGDW` (tf-addons): w <- w - weight_decay * w before the
    update, on the parameter groups that carry it (not multiplied by the learning rate).
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    p.mul_(1.0 - wd)
                if m == 0:
                    p.add_(g, alpha=-lr)
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = state["velocity"]
                v.mul_(m).add_(g, alpha=-lr)
                if group["nesterov"]:
                    p.add_(v, alpha=m).add_(g, alpha=-lr)
                else:
                    p.add_(v)
        return loss


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimiser of an `OptimConfig` (vatt.finetune.config) over the model's trainable parameters."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return KerasSGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)
