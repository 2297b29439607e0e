"""VATT: Video-Audio-Text Transformer (Akbari et al., NeurIPS 2021) in PyTorch.

    import vatt
    model = vatt.build_model("tx_fac_bbs")        # or a config from vatt.configs
    model = vatt.load("converted/bbs")            # model.safetensors + config.json
    out = model(video=..., audio=..., text=...)   # VATTOutput
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Attributes are resolved lazily so that `import vatt` (and the CLI's start-up) does not import torch.
_LAZY = {
    "build_model": ("vatt.model.factory", "build_model"),
    "load": ("vatt.checkpoint.io", "load"),
    "save": ("vatt.checkpoint.io", "save"),
    "configs": ("vatt.configs", None),
    "get_preset": ("vatt.configs", "get_preset"),
    "Index": ("vatt.index.search", "Index"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vatt' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)
