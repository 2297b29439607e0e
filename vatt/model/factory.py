"""One place that builds a model from a config."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vatt import configs
from vatt.configs import ClassifierConfig, UnifiedConfig, VATTConfig
from vatt.model.transformer import MultiHeadAttention
from vatt.model.vatt import VATT, Classifier, UnifiedVATT


def _init_weights(module: nn.Module) -> None:
    """The official initialisers (Keras defaults unless the official code names one):
    - Dense / Conv kernels: glorot_uniform, fans over the receptive field for convs; biases zero. The fused
      q/k/v projection is three Keras kernels [d, inner]: each slice gets its own glorot_uniform (a
      glorot over the fused [3·inner, d] weight would be √2 narrower when inner = d);
    - set where the modules are built: `Embedding` tables (the T5 relative bias, word tables before word2vec
      replaces them) uniform ±0.05; positional tables truncated normal σ = d^-0.5; AGG tokens
      glorot_normal; norms ones and zeros.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None and not getattr(m, "_keep_bias_init", False):
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, MultiHeadAttention):
            with torch.no_grad():
                for part in m.qkv.weight.chunk(3, dim=0):  # views: q, k, v kernels, each [inner, d]
                    nn.init.xavier_uniform_(part)


def build_model(cfg: Any) -> nn.Module:
    """Build `VATT`, `UnifiedVATT` or `Classifier` from a config (or the name of a preset)."""
    if isinstance(cfg, str):
        cfg = configs.get_preset(cfg)
    if isinstance(cfg, VATTConfig):
        model = VATT(cfg)
    elif isinstance(cfg, UnifiedConfig):
        model = UnifiedVATT(cfg)
    elif isinstance(cfg, ClassifierConfig):
        model = Classifier(cfg)
        # The AudioSet prior bias stays; a softmax classifier's bias starts at zero like every Keras Dense.
        model.head.classification._keep_bias_init = cfg.output == "sigmoid"
    else:
        raise TypeError(f"build_model: expected a model config or a preset name, got {type(cfg).__name__} "
                        f"(backbone presets like 'vit_base' are parts; build an assembly or classifier preset)")
    _init_weights(model)
    return model
