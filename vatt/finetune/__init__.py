"""Fine-tuning classifiers (video action recognition, audio events, images) the official way.

    from vatt.finetune import load_config, finetune
    result = finetune(load_config("configs/finetune_fsdd_tiny.yaml", ["optim.total_steps=500"]))
    result.best          # {"step", "metric", "value", "metrics", "path"}; path is a vatt model folder

Modules: `config` (the experiment config), `data` (the datasets a config names), `weights` (initialising a
classifier from a pre-trained or converted model), `task` (what fine-tuning adds to the training engine
`vatt.engine`). The losses are in `vatt.losses`, multi-view scoring in `vatt.eval.classification`.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FinetuneConfig": ("vatt.finetune.config", "FinetuneConfig"),
    "load_config": ("vatt.finetune.config", "load_config"),
    "finetune": ("vatt.finetune.task", "finetune"),
    "FinetuneResult": ("vatt.finetune.task", "FinetuneResult"),
    "evaluate_classifier": ("vatt.eval.classification", "evaluate_classifier"),
    "classification_metrics": ("vatt.eval.classification", "classification_metrics"),
    "init_classifier": ("vatt.finetune.weights", "init_classifier"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vatt.finetune' has no attribute {name!r}")
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
