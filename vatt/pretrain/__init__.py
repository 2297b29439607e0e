"""Self-supervised pre-training: config, optimiser and schedule, data order, checkpoints, the loop.

    from vatt.pretrain import load_config, pretrain
    result = pretrain(load_config("configs/pretrain_tiny_sample.yaml", ["optim.total_steps=100"]))

`vatt pretrain` is the command-line face of the same two calls.
"""
from __future__ import annotations

import importlib
from typing import Any

# Resolved lazily: the config (and `vatt pretrain --help`) must not pay for importing torch.
_LAZY = {
    "pretrain": "vatt.pretrain.task",
    "PretrainResult": "vatt.pretrain.task",
    "TrainingDiverged": "vatt.engine.loop",
    "load_config": "vatt.pretrain.config",
    "PretrainConfig": "vatt.pretrain.config",
    "ConfigError": "vatt.pretrain.config",
    "Callback": "vatt.engine.progress",
    "ProgressBar": "vatt.engine.progress",
    "read_metrics": "vatt.engine.progress",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vatt.pretrain' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
