"""Optimisers and the learning-rate schedule of pre-training and fine-tuning (spec section 7).

Official recipe (`configs/experiment.py:Pretrain`, `utils/train/schedules.py`): Adam with β = 0.9/0.999,
ε = 1e-7, no weight decay, no clipping; the rate rises linearly from 0 to 1e-4 over 5000 steps, then
follows a half cosine from 1e-4 down to 5e-5 at step 500k (`StepCosineLearningRateWithLinearWarmup` with
levels (1e-4, 5e-5) at steps (5000, 500000)). The rate of a step is the schedule at the number of steps
done before it (Keras reads `optimizer.iterations` before incrementing it).

The official Adam is Keras Adam (`ResourceApplyAdam`), which adds ε to the square root of the
*uncorrected* second moment: w -= lr·√(1-β2^t)/(1-β1^t) · m / (√v + ε). torch's Adam adds ε after the
bias correction, i.e. acts as Keras with ε·√(1-β2^t) -- 20x smaller than Keras' ε at t=2 with
β2=0.999, a difference visible in the first steps of a run. `KerasAdam` is the Keras form and the
default ("adam"); torch's form is the option "torch_adam".

AdamW is the option for weight decay. Its decay here is torch's (θ -= lr·wd·θ); the official `AdamW`
config (tf-addons) applies wd·θ without the learning-rate factor, so equal `weight_decay` values are
not equal decays.

The official fine-tuning optimiser is `tf.keras.optimizers.SGD(momentum=0.9)`, whose update folds the
learning rate into the velocity:  v <- m v - lr_t g;  w <- w + v  (Nesterov: w <- w + m v - lr_t g).
`torch.optim.SGD` instead accumulates raw gradients and scales the sum by today's rate
(b <- m b + g; w <- w - lr_t b). The two agree at a constant rate but not during the 2,500-step warm-up
or the cosine decay, so `KerasSGD` implements the Keras form. The learning-rate schedule is
`vatt.engine.optim.learning_rate` (linear warm-up, then cosine to `final_lr`), a function of the step.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.adam import adam as functional_adam

from vatt.engine.config import OptimConfig


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


def _evaluate(closure) -> torch.Tensor | None:
    """The loss of an optimiser's `step(closure)` (torch's convention: the closure recomputes it with grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class KerasAdam(torch.optim.Optimizer):
    """Adam as Keras computes it (see the module docstring), without weight decay.

    The state of each parameter has torch Adam's names -- `step` (the Keras `iterations` after this
    parameter's last update), `exp_avg` (m), `exp_avg_sq` (v) -- so that the Keras slots of an official
    checkpoint convert one to one (`vatt.checkpoint.optimizer_state`).

    Speed: torch's fused Adam kernel makes one pass over each tensor where the update written out takes five
    (half the time: 0.11 s instead of 0.22 s per BBS step on a 2-core CPU, about 1 % of it). It adds its ε to √v / √(1-β2^t); with ε' = ε / √(1-β2^t) that is
    (√v + ε) / √(1-β2^t), the Keras denominator, so the kernel computes the Keras update (up to float
    rounding). ε' depends on t, which is one number for a group only while every parameter of the group has
    been updated at every step: a group where a parameter once had no gradient, or one of DTensors (FSDP),
    is updated parameter by parameter with the formula written out.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7):
        if lr < 0 or eps < 0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))
        self._checked = False  # whether the step counters (of loaded state) were found equal within each group

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._checked = False

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        if not self._checked:
            for group in self.param_groups:
                steps = {float(self.state[p]["step"]) for p in group["params"] if self.state[p]}
                group["one_step_count"] = len(steps) <= 1 and all(
                    bool(self.state[p]) == bool(steps) for p in group["params"])
            self._checked = True
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if len(params) < len(group["params"]):
                group["one_step_count"] = False  # from now on the parameters' t differ
            if group["one_step_count"] and _fusable(params):
                self._fused_update(group, params)
            else:
                for p in params:
                    self._update(p, p.grad, group)
        return loss

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _fused_update(self, group: dict, params: list[torch.Tensor]) -> None:
        (beta1, beta2), eps = group["betas"], group["eps"]
        states = [self._state(p) for p in params]
        t = float(states[0]["step"]) + 1  # the kernel adds the 1 to every counter itself
        functional_adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], fused=True,
                        amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0.0,
                        eps=eps / math.sqrt(1.0 - beta2**t), maximize=False)

    def _update(self, p: torch.Tensor, g: torch.Tensor, group: dict) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        state = self._state(p)
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1.0 - beta1)  # m += (g - m)(1 - β1), as the Keras kernel writes it
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)


def _fusable(params: list[torch.Tensor]) -> bool:
    """torch's fused Adam takes plain CPU / CUDA float tensors of one device (not FSDP's DTensors)."""
    device = params[0].device
    return all(type(p) in (torch.Tensor, nn.Parameter) and p.device == device and p.dtype.is_floating_point
               and device.type in ("cpu", "cuda") for p in params)


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
        loss = _evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    def _update(self, p: torch.Tensor, g: torch.Tensor, group: dict) -> None:
        lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd:
            p.mul_(1.0 - wd)
        if m == 0:
            p.add_(g, alpha=-lr)
            return
        state = self.state[p]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        v = state["velocity"]
        v.mul_(m).add_(g, alpha=-lr)
        if group["nesterov"]:
            p.add_(v, alpha=m).add_(g, alpha=-lr)
        else:
            p.add_(v)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.optimizer` names, over the model's trainable parameters."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return KerasSGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.optimizer == "adam":
        return KerasAdam(groups, **kwargs)
    if cfg.optimizer == "torch_adam":
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig) -> float:
    """Set the rate of every group for `step`. The schedule is a pure function of (step, config), so the
    step alone restores it on resume, and a resumed run may extend `total_steps`."""
    lr = learning_rate(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
