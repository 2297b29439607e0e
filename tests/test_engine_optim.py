"""vatt.engine.optim: the official schedule and optimiser settings."""
import math

import pytest
import torch
from torch import nn

from vatt.pretrain.config import PretrainOptimConfig as OptimConfig
from vatt.engine.optim import KerasAdam, KerasSGD, build_optimizer, learning_rate, param_groups, set_learning_rate


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
    assert isinstance(opt, KerasAdam)  # the official optimiser; torch's form is the option "torch_adam"
    assert type(build_optimizer(model, OptimConfig(optimizer="torch_adam"))) is torch.optim.Adam
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


def keras_adam_closed_form(grads, lrs, beta1=0.9, beta2=0.999, eps=1e-7, start_step=0, w=0.0):
    """Keras' `ResourceApplyAdam` in float64: ε on the square root of the uncorrected second moment."""
    m = v = 0.0
    for i, (g, lr) in enumerate(zip(grads, lrs)):
        t = start_step + i + 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w -= lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) * m / (math.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("scale", [1.0, 1e-6])  # 1e-6: gradients near ε, where the two ε forms part
def test_keras_adam_matches_the_closed_form(scale):
    grads = [0.3 * scale, -1.2 * scale, 0.05 * scale, 2.0 * scale, -0.7 * scale]
    lrs = [1e-3, 2e-3, 3e-3, 1e-3, 5e-4]
    w = nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = build_optimizer(nn.ParameterList([w]), OptimConfig())
    torch_w = nn.Parameter(torch.zeros((), dtype=torch.float64))
    torch_opt = build_optimizer(nn.ParameterList([torch_w]), OptimConfig(optimizer="torch_adam"))
    for g, lr in zip(grads, lrs):
        for p, o in ((w, opt), (torch_w, torch_opt)):
            o.param_groups[0]["lr"] = lr
            p.grad = torch.tensor(g, dtype=torch.float64)
            o.step()
    want = keras_adam_closed_form(grads, lrs)
    assert float(w.detach()) == pytest.approx(want, rel=1e-12, abs=1e-18)
    if scale < 1:  # torch's Adam adds ε after the bias correction: far from Keras when |g| ~ ε
        assert abs(float(torch_w.detach()) - want) > 0.1 * abs(want)


def test_keras_adam_resumes_from_its_step_counter():
    """A restored counter t0 makes the next update use t0 + 1 in the bias corrections, as Keras' iterations."""
    w = nn.Parameter(torch.zeros(()))
    opt = KerasAdam([w], lr=1e-3)
    opt.state[w] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(()), "exp_avg_sq": torch.zeros(())}
    w.grad = torch.tensor(0.5)
    opt.step()
    assert float(w.detach()) == pytest.approx(keras_adam_closed_form([0.5], [1e-3], start_step=1), rel=1e-6)
    assert float(opt.state[w]["step"]) == 2


def test_keras_adam_fused_kernel_and_written_out_update_agree():
    # The fused path (one t per group) against the parameter-by-parameter one, on the same float32 tensors.
    torch.manual_seed(0)
    init = [torch.randn(300, 7), torch.randn(11), torch.randn(5, 5, 3)]
    grads = [[torch.randn_like(t) * 10 ** -k for t in init] for k in (0, 3, 6, 2)]  # some near ε
    fused, plain = [nn.Parameter(t.clone()) for t in init], [nn.Parameter(t.clone()) for t in init]
    opt_f, opt_p = KerasAdam(fused, lr=1e-2), KerasAdam(plain, lr=1e-2)
    for step_grads in grads:
        for ps in (fused, plain):
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
        opt_f.step()
        with torch.no_grad():
            for p in plain:
                opt_p._update(p, p.grad, opt_p.param_groups[0])  # the written-out formula
        for a, b in zip(fused, plain):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    assert opt_f.param_groups[0]["one_step_count"]  # it did take the fused path


def test_keras_adam_parameter_without_gradient_keeps_its_own_t():
    # A parameter that misses step 2 has t = 2 at step 3 while the others have t = 3: the group is then
    # updated parameter by parameter, each with its own counter, as Keras' slots would.
    a, b = nn.Parameter(torch.zeros((), dtype=torch.float64)), nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = KerasAdam([a, b], lr=1e-3)
    for i, (ga, gb) in enumerate([(0.3, -0.2), (1.0, None), (-0.5, 0.7)]):
        a.grad = torch.tensor(ga, dtype=torch.float64)
        b.grad = None if gb is None else torch.tensor(gb, dtype=torch.float64)
        opt.step()
    assert float(a) == pytest.approx(keras_adam_closed_form([0.3, 1.0, -0.5], [1e-3] * 3), rel=1e-12)
    assert float(b) == pytest.approx(keras_adam_closed_form([-0.2, 0.7], [1e-3] * 2), rel=1e-12)
    assert [float(opt.state[p]["step"]) for p in (a, b)] == [3, 2]
    assert not opt.param_groups[0]["one_step_count"]


def test_keras_sgd_folds_the_rate_into_the_velocity():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = KerasSGD([w], lr=0.1, momentum=0.9)
    grads, rates = [1.0, 2.0, -1.0], [0.1, 0.2, 0.05]
    v, ref = 0.0, 1.0
    for g, lr in zip(grads, rates):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor([g])
        opt.step()
        v = 0.9 * v - lr * g  # Keras: accum = m * accum - lr * g; var += accum
        ref += v
    assert w.item() == pytest.approx(ref, abs=1e-6)
    torch_w = torch.nn.Parameter(torch.tensor([1.0]))
    torch_opt = torch.optim.SGD([torch_w], lr=0.1, momentum=0.9)
    for g, lr in zip(grads, rates):
        torch_opt.param_groups[0]["lr"] = lr
        torch_w.grad = torch.tensor([g])
        torch_opt.step()
    assert abs(torch_w.item() - ref) > 1e-3  # torch rescales old gradients by today's rate
