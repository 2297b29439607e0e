"""Self-supervised pre-training: config, optimiser and schedule, data order, checkpoints, the loop.

    from vatt.train import load_config, pretrain
    result = pretrain(load_config("configs/pretrain_tiny_sample.yaml", ["optim.total_steps=100"]))

`vatt pretrain` is the command-line face of the same two calls.
"""
from __future__ import annotations

import importlib
from typing import Any

# Resolved lazily: the config (and `vatt pretrain --help`) must not pay for importing torch.
_LAZY = {
    "pretrain": "vatt.train.loop",
    "PretrainResult": "vatt.train.loop",
    "TrainingDiverged": "vatt.train.loop",
    "load_config": "vatt.train.config",
    "PretrainConfig": "vatt.train.config",
    "ConfigError": "vatt.train.config",
    "Callback": "vatt.train.progress",
    "ProgressBar": "vatt.train.progress",
    "read_metrics": "vatt.train.progress",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vatt.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
