"""Dropout with a fast CPU mask.

On CPU, `torch.bernoulli_` (what `F.dropout` uses) costs ~15-20 ns per element, which made dropout ~40 %
of a ViT-Base training step here (attention-probability dropout alone touches B*H*N^2 elements per
layer). This module draws the same Bernoulli(1 - p) keep-mask from numpy's PCG64 (drop probability
exact to 2^-32, finer than `torch.rand`'s 2^-24), split over threads, seeded from torch's generator so
`torch.manual_seed` still makes runs repeatable. On CUDA, or outside training, it is plain `F.dropout`.
The distribution of the computation is unchanged; only the random stream differs.

An element is kept when a 32-bit uniform u is >= T = round(p * 2^32). Most elements are decided by
u's top byte alone (above T's top byte: kept; below: dropped); only the 1 in 256 that tie with T's top
byte draw u's other 24 bits. That is the same event as comparing all 32 bits, for a quarter of the
random bits and one byte-wide comparison: about 4x faster than drawing a 32-bit uniform per element.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_POOL: ThreadPoolExecutor | None = None
_MIN_PARALLEL = 1 << 18  # below this, one thread is faster than handing out work
_MAX_CHUNKS = 16
_BLOCK = 1 << 20  # elements drawn at a time within a chunk: bounds the uint8 scratch


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()))
    return _POOL


@torch.compiler.disable  # numpy threads; torch.compile runs it as it is (on CUDA dropout is F.dropout, compiled)
def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool CPU tensor, True with probability 1 - round(p * 2^32) / 2^32, from torch-seeded PCG64 streams."""
    n = math.prod(shape)
    threshold = min(round(p * 2**32), 2**32 - 1)
    t_top, t_rest = np.uint8(threshold >> 24), np.uint32(threshold & 0xFFFFFF)  # T's top byte and its low 24 bits
    out = np.empty(n, dtype=bool)
    # The split depends on the size only (not on the thread count), so a seed gives the same mask on any machine.
    chunks = max(1, min(_MAX_CHUNKS, n // _MIN_PARALLEL))
    seeds = torch.randint(0, 2**62, (chunks,)).tolist()  # consume torch's RNG: runs stay repeatable
    bounds = np.linspace(0, n, chunks + 1).astype(np.int64)

    def fill(i: int) -> None:
        # numpy releases the GIL while drawing and comparing, so chunks run in parallel
        rng = np.random.Generator(np.random.PCG64(seeds[i]))
        end = int(bounds[i + 1])
        for lo in range(int(bounds[i]), end, _BLOCK):
            hi = min(lo + _BLOCK, end)
            draws = -(-(hi - lo) // 8)  # each 64-bit draw gives the top bytes of 8 uniforms
            u_top = rng.bit_generator.random_raw(draws).view(np.uint8)[: hi - lo]
            np.greater(u_top, t_top, out=out[lo:hi])
            ties = np.flatnonzero(u_top == t_top)
            out[lo + ties] = rng.integers(0, 1 << 24, ties.size, dtype=np.uint32) >= t_rest

    if chunks == 1:
        fill(0)
    else:
        list(_pool().map(fill, range(chunks)))
    return torch.from_numpy(out).view(shape)


def scaled_mask(keep: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The bool keep-mask as `scale` / 0 in `dtype`. Through uint8: torch converts bool ~10x slower, and a
    float multiply is several times faster than `torch.where` on a bool mask."""
    mask = keep.view(torch.uint8).to(dtype)
    return mask if scale == 1.0 else mask.mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale [+ residual]; keeps the bool mask (not a float one) for the backward pass."""

    @staticmethod
    def forward(ctx, x, keep, scale, residual):
        ctx.scale, ctx.dtype = scale, x.dtype
        ctx.save_for_backward(keep)
        if x.dtype in (torch.float32, torch.float64):
            # x * (keep * scale) is x * scale or 0: the same floats as the unfused form, in one pass
            mask = scaled_mask(keep, scale, x.dtype)
            return x * mask if residual is None else torch.addcmul(residual, x, mask)
        # bf16 / fp16: 1 / (1 - p) is not exact in the low precision, so multiply by the 0/1 mask (exact)
        # and then by the Python scalar (computed in float32, rounded once, as `x * scale` is); no mixed-dtype
        # elementwise kernels, which are several times slower.
        y = (x * scaled_mask(keep, 1.0, x.dtype)).mul_(scale)
        return y if residual is None else residual + y

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        if ctx.dtype in (torch.float32, torch.float64):
            grad_x = grad * scaled_mask(keep, ctx.scale, grad.dtype)
        else:
            grad_x = (grad.to(ctx.dtype) * scaled_mask(keep, 1.0, ctx.dtype)).mul_(ctx.scale)
        return grad_x, None, None, grad if ctx.needs_input_grad[3] else None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p >= 1.0:
        return torch.zeros_like(x)
    return _MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p), None)


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`residual + dropout(x)`, in one pass on CPU."""
    if not training or p == 0.0 or p >= 1.0 or x.device.type != "cpu" or x.shape != residual.shape:
        return residual + dropout(x, p, training)
    return _MaskedScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p), residual)


class Dropout(nn.Dropout):
    """`nn.Dropout` with the fast CPU mask (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual + self(x)`, fused on CPU."""
        return dropout_add(x, residual, self.p, self.training)
