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
    "save": ("vatt.checkpoint.io", "save"),
    "configs": ("vatt.configs", None),
    "get_preset": ("vatt.configs", "get_preset"),
    "Index": ("vatt.index.search", "Index"),
}

__all__ = ["build_model", "load", *_LAZY]


# The model users get carries the embedding methods (`model.embed_video(...)`, `vatt.embed`); the model
# package itself does not depend on the embedding API, so they are bound here, on the way out. The imports
# are inside the functions for the reason `_LAZY` exists: `import vatt` must not import torch.

def build_model(cfg: Any):
    """A new model from a config or a preset name (`vatt.model.build_model`), with its embedding methods."""
    from vatt.embed import with_embedding_methods
    from vatt.model.factory import build_model as build

    return with_embedding_methods(build(cfg))


def load(directory, map_location="cpu", strict: bool = True, **kwargs: Any):
    """The model of a model folder (`vatt.checkpoint.io.load`: config.json + model.safetensors [+ vocab.txt],
    checked, in eval mode), with its embedding methods."""
    from vatt.checkpoint.io import load as load_folder
    from vatt.embed import with_embedding_methods

    return with_embedding_methods(load_folder(directory, map_location=map_location, strict=strict, **kwargs))


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vatt' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)
