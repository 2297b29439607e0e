"""Attention with dropout on the probabilities, computed a few heads at a time (CPU training).

`softmax(q k^T / sqrt(d)) -> dropout -> @ v` over a whole batch materialises several `[B, H, N, N]`
tensors per layer (59 MB each for one ViT-Base pair of clips): the scores, the probabilities, the scaled
probabilities and the dropped ones, and as many again in the backward pass. Each is a pass through main
memory, and each is large enough that glibc maps fresh pages for it (and the kernel zeroes them) every
time. Here the same computation runs over groups of (clip, head) pairs whose `[N, N]` blocks fit in the
cache, so the softmax and the dropout read what the matrix product has just written; only the
probabilities are kept for the backward pass (with the bool keep-mask, as before).

Two rearrangements, both exact in distribution and equal up to rounding: the 1/sqrt(d) scale is applied
to q (exact for d = 64, a power of two) instead of the scores, and dropout's 1 / (1 - p) is applied to
the `[N, d]` output instead of the `[N, N]` probabilities. The keep-mask is drawn by
`vatt.model.dropout.keep_mask` for the full `[B, H, N, N]` shape, the same draw as the unfused
computation, so a seed gives the same mask either way.
"""
from __future__ import annotations

import torch

from vatt.model.dropout import keep_mask, scaled_mask

# (clip, head) blocks per group: about 2^20 scores (4 MB in float32), so a group stays in the cache.
_GROUP_ELEMENTS = 1 << 20


def _groups(g: int, n: int):
    step = max(1, _GROUP_ELEMENTS // (n * n))
    return [(lo, min(g, lo + step)) for lo in range(0, g, step)]


class _DroppedAttention(torch.autograd.Function):
    """q (already scaled), k, v `[G, N, d]`, keep `[G, N, N]` bool -> (softmax(q k^T) * keep) @ v * scale."""

    @staticmethod
    def forward(ctx, q, k, v, keep, scale):
        g, n, _ = q.shape
        out = q.new_empty(g, n, v.shape[-1])
        probs = []
        for lo, hi in _groups(g, n):
            p = torch.bmm(q[lo:hi], k[lo:hi].transpose(1, 2)).softmax(dim=-1)
            probs.append(p)
            torch.bmm(p * scaled_mask(keep[lo:hi], 1.0, p.dtype), v[lo:hi], out=out[lo:hi])
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, keep, *probs)
        return out.mul_(scale)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, keep, *probs = ctx.saved_tensors
        g, n, _ = q.shape
        grad_out = (grad_out * ctx.scale).to(v.dtype)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for (lo, hi), p in zip(_groups(g, n), probs):
            go = grad_out[lo:hi]
            mask = scaled_mask(keep[lo:hi], 1.0, p.dtype)
            torch.bmm((p * mask).transpose(1, 2), go, out=grad_v[lo:hi])
            grad_p = torch.bmm(go, v[lo:hi].transpose(1, 2)).mul_(mask)
            grad_s = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
            torch.bmm(grad_s, k[lo:hi], out=grad_q[lo:hi])
            torch.bmm(grad_s.transpose(1, 2), q[lo:hi], out=grad_k[lo:hi])
        return grad_q, grad_k, grad_v, None, None


def dropped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """`[B, H, N, d]` q, k, v -> `[B, H, N, d]`: dropout(softmax(scale q k^T), p) @ v with the fast CPU mask.

    No attention bias (the video and audio encoders attend to every token); training only (p > 0).
    """
    b, h, n, d = q.shape
    keep = keep_mask(torch.Size((b, h, n, n)), p).view(b * h, n, n)
    if torch.is_autocast_enabled(q.device.type):  # the dtype autocast would give the matrix products
        q, k, v = (t.to(torch.get_autocast_dtype(q.device.type)) for t in (q, k, v))
    with torch.autocast(q.device.type, enabled=False):  # the function's `out=` products need one dtype
        out = _DroppedAttention.apply((q * scale).reshape(b * h, n, d), k.reshape(b * h, n, d),
                                      v.reshape(b * h, n, v.shape[-1]), keep, 1.0 / (1.0 - p))
    return out.view(b, h, n, v.shape[-1])
