"""The Adam state of an official TF pre-training checkpoint -> a training checkpoint that `vatt pretrain --resume`
continues from.

An official checkpoint written during pre-training (`tf.train.Checkpoint(model=..., optimizer=...)`) holds,
beside the weights, Keras Adam's slots `<variable>/.OPTIMIZER_SLOT/optimizer/{m,v}` and the step counter
`optimizer/iter`. Keras Adam (`vatt.engine.optim.KerasAdam`) uses t = iter + 1 for the bias corrections of
the next update and the learning rate of the schedule at `iter`, so resuming means:
- the weights, as `convert_tf` maps them (BatchNorm moving statistics included);
- per trainable parameter, `exp_avg` = m and `exp_avg_sq` = v laid out as the weight is (the same
  transposes and q/k/v fusion: they are element-wise with it), and `step` = iter;
- the run's step counter = iter, which gives the learning rate of the next step.
The frozen word-embedding table has no slots (Keras does not train it), as it has no optimizer state here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

import vatt.configs
from vatt.checkpoint.convert_tf import SUFFIX, convert_arrays
from vatt.checkpoint.tf_bundle import BundleReader, checkpoint_prefix
from vatt.engine import checkpoint as ckpt
from vatt.engine.optim import build_optimizer
from vatt.engine.config import OptimConfig

SLOT = "/.OPTIMIZER_SLOT/optimizer/{}"
ITERATIONS = "optimizer/iter"


def read_tf_optimizer_state(prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """(m slots, v slots, iterations) of an official checkpoint; slot keys are the variables' keys without
    the suffix, as `read_tf_checkpoint` names the weights. Read with the TensorFlow-free bundle reader."""
    bundle = BundleReader(checkpoint_prefix(prefix))
    keys = bundle.keys()
    if ITERATIONS + SUFFIX not in keys:
        raise ValueError(f"{prefix}: no optimizer state (no {ITERATIONS}); it was not saved during training")
    slots: dict[str, dict[str, np.ndarray]] = {"m": {}, "v": {}}
    for key in keys:
        for name, table in slots.items():
            marker = SLOT.format(name) + SUFFIX
            if key.endswith(marker):
                table[key[: -len(marker)]] = bundle.read(key)
    if not slots["m"]:
        raise ValueError(f"{prefix}: no Adam slots (.OPTIMIZER_SLOT/optimizer/m); only Adam state converts")
    return slots["m"], slots["v"], int(bundle.read(ITERATIONS + SUFFIX))


def convert_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, m: dict[str, np.ndarray],
                            v: dict[str, np.ndarray], iterations: int) -> None:
    """Fill `optimizer`'s state (Keras / torch Adam names) for `model`'s trainable parameters from the slots."""
    exp_avg, report_m = convert_arrays(model, m)
    exp_avg_sq, _ = convert_arrays(model, v)
    if report_m.resized:
        raise ValueError("the checkpoint's positional tables differ in size from the model's; Adam moments of a "
                         f"resized table have no meaning ({report_m.resized[0]})")
    names = {id(p): n for n, p in model.named_parameters()}
    missing = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if name not in exp_avg or name not in exp_avg_sq:
                missing.append(name)
                continue
            optimizer.state[p] = {"step": torch.tensor(float(iterations)),
                                  "exp_avg": exp_avg[name].to(p.dtype).clone(),
                                  "exp_avg_sq": exp_avg_sq[name].to(p.dtype).clone()}
    if missing:
        raise ValueError(f"{len(missing)} trainable parameters have no Adam slots in the checkpoint: "
                         f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))


def write_training_checkpoint(prefix: str, model: nn.Module, model_config: Any, weights: dict[str, torch.Tensor],
                              run_dir: str | Path) -> Path:
    """Write `<run_dir>/checkpoints/step_<iter>/` from an official checkpoint's weights (already converted,
    `weights`) and its Adam state, so that `vatt pretrain --resume` with `run.output_dir=<run_dir>` takes the
    next step the official run would have taken. Returns the folder.

    The optimiser is the default of `vatt.engine.config.OptimConfig` (Keras Adam, no weight decay: one
    parameter group), the official pre-training optimiser. A converted checkpoint has no data position or
    random state of ours: the resumed run reads its data from the start.
    """
    m, v, iterations = read_tf_optimizer_state(prefix)
    optimizer = build_optimizer(model, OptimConfig())
    convert_optimizer_state(model, optimizer, m, v, iterations)
    optim_state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    train_state = {"progress": {"step": iterations, "skipped_steps": 0, "consecutive_skipped": 0},
                   "optimizer": optim_state, "scheduler": {"step": iterations}, "ranks": [], "config": {},
                   "converted_from": str(prefix)}
    return ckpt.save_checkpoint(Path(run_dir) / "checkpoints", iterations, weights,
                                vatt.configs.to_dict(model_config), train_state, keep_last=1 << 30)
