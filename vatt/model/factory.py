"""One place that builds a model from a config."""
from __future__ import annotations

from typing import Any

from torch import nn

from vatt import configs
from vatt.configs import ClassifierConfig, UnifiedConfig, VATTConfig


def _init_weights(module: nn.Module) -> None:
    # Keras defaults: glorot_uniform kernels, zero biases (conv fan computed over the receptive field too).
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None and not getattr(m, "_keep_bias_init", False):
                nn.init.zeros_(m.bias)


def build_model(cfg: Any) -> nn.Module:
    """Build `VATT`, `UnifiedVATT` or `Classifier` from a config (or the name of a preset)."""
    if isinstance(cfg, str):
        cfg = configs.get_preset(cfg)
    if isinstance(cfg, VATTConfig):
        from vatt.model.vatt import VATT
        model = VATT(cfg)
    elif isinstance(cfg, UnifiedConfig):
        from vatt.model.vatt import UnifiedVATT
        model = UnifiedVATT(cfg)
    elif isinstance(cfg, ClassifierConfig):
        from vatt.model.vatt import Classifier
        model = Classifier(cfg)
        model.head.classification._keep_bias_init = True  # the AudioSet prior bias
    else:
        raise TypeError(f"build_model: expected a model config or a preset name, got {type(cfg).__name__} "
                        f"(backbone presets like 'vit_base' are parts; build an assembly or classifier preset)")
    _init_weights(model)
    return model
