"""The autocast policy, one for training and inference: "fp32" (the default, as the official code),
"bf16", or "auto" (bf16 where the device computes it fast)."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 for "bf16" (and for "auto" where the device computes bf16 fast); None = float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:  # oneDNN's check for AVX512-BF16 / AMX; private, hence the fallback
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def resolve(precision: str, device: torch.device | str) -> str:
    """"fp32" or "bf16": what `precision` computes in on `device` ("auto" decided), the name to record beside a
    result so that it says which arithmetic produced it."""
    return "fp32" if autocast_dtype(precision, torch.device(device)) is None else "bf16"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`'s type, or a no-op for float32 (None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
