"""Transformer encoders: the generic pre-norm encoder (ViT, WaT, SpT, UT, BERT) and the official T5 encoder.

Generic block (`common/transformers.py`, pre_norm=True):
    x = x + Drop(MHA(LN(x)))
    x = x + Drop(W_o(Drop(GELU(W_i(LN(x))))))
then a final LayerNorm and Dropout. LayerNorm eps 1e-6, exact (erf) GELU, dropout 0.1 on the attention
probabilities, each residual branch and after the MLP activation.

T5 encoder (`text/t5.py:T5Encoder`) differs: RMS norm before attention but a full LayerNorm before the
MLP, no biases, unscaled attention scores, and a relative position bias that lives in layer 0 only and is
reused (plus the padding mask) by every layer.

Attention goes through `F.scaled_dot_product_attention`, so CUDA uses its flash / memory-efficient
kernels. q, k and v are one fused projection (one matmul instead of three); the checkpoint converter
concatenates the official separate q/k/v kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vatt.model.attention import dropped_attention
from vatt.model.dropout import Dropout, dropout

from vatt.configs import TransformerConfig

MASK_VALUE = -1e9  # official additive mask value: (1 - mask) * -1e9


def attention_bias_from_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[B, N]` 1/0 padding mask -> additive bias `[B, 1, 1, N]` with the official -1e9."""
    return ((1.0 - mask.to(dtype)) * MASK_VALUE)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout_rate: float, bias: bool, scaled: bool = True):
        super().__init__()
        self.num_heads, self.d_kv = num_heads, d_kv
        self.qkv = nn.Linear(d_model, 3 * num_heads * d_kv, bias=bias)
        self.o = nn.Linear(num_heads * d_kv, d_model, bias=bias)
        self.dropout_rate = dropout_rate
        # T5 does not divide the scores by sqrt(d_kv).
        self.scale = None if scaled else 1.0

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.d_kv).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, dk]
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        p = self.dropout_rate if self.training else 0.0
        if 0.0 < p < 1.0 and x.device.type == "cpu" and attn_bias is None:
            out = dropped_attention(q, k, v, p, self.d_kv**-0.5 if self.scale is None else self.scale)
        elif p > 0.0 and x.device.type == "cpu":
            # SDPA on CPU falls back to this same math path when it has to drop attention probabilities;
            # written out, the dropout can use the fast CPU mask.
            scores = (q @ k.transpose(-2, -1)) * (self.d_kv**-0.5 if self.scale is None else self.scale)
            if attn_bias is not None:
                scores = scores + attn_bias
            out = dropout(scores.softmax(dim=-1), p, True) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=p, scale=self.scale)
        return self.o(out.transpose(1, 2).reshape(b, n, self.num_heads * self.d_kv))


class MLP(nn.Module):
    """wi -> exact GELU -> dropout -> wo."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float, bias: bool):
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=bias)
        self.wo = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.gelu(self.wi(x))))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attention = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.dropout_rate, cfg.use_bias)
        self.mlp_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.dropout_rate, cfg.use_bias)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dropout.add(self.attention(self.layer_norm(x), attn_bias), x)
        return self.dropout.add(self.mlp(self.mlp_layer_norm(x)), x)


class _Stack(nn.Module):
    """Shared by both encoders: the optional activation checkpointing of every block."""

    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run_blocks(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        for block in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_bias, use_reentrant=False)
            else:
                x = block(x, attn_bias)
        return x


class TransformerEncoder(_Stack):
    """Generic pre-norm encoder. `mask` is `[B, N]` with 1 for tokens to attend (None: all tokens)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # Without padding no mask is passed, which lets SDPA pick its fused kernels.
        attn_bias = None if mask is None else attention_bias_from_mask(mask, x.dtype)
        return self.dropout(self.final_layer_norm(self._run_blocks(x, attn_bias)))


class RMSNorm(nn.Module):
    """T5LayerNorm: x * rsqrt(mean(x^2) + eps) * weight; no centring, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


class T5Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attention = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.dropout_rate, bias=False,
                                            scaled=False)
        # The official T5 encoder uses a full LayerNorm (with beta) before the MLP, unlike HF T5.
        self.mlp_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.dropout_rate, bias=False)
        self.dropout = Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout.add(self.attention(self.layer_norm(x), attn_bias), x)
        return self.dropout.add(self.mlp(self.mlp_layer_norm(x)), x)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32, max_distance: int = 64) -> torch.Tensor:
    """Bidirectional T5 buckets (as HF `T5Attention._relative_position_bucket`, official max_distance 64)."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    n = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # log-spaced buckets for larger distances; int() truncation as the official code
    large = max_exact + (
        torch.log(n.float().clamp_min(1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class T5Encoder(_Stack):
    """The official T5 encoder stack. `mask` is `[B, N]` with 1 for real tokens."""

    def __init__(self, cfg: TransformerConfig, num_buckets: int = 32, max_distance: int = 64):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.dropout = Dropout(cfg.dropout_rate)
        # Lives in layer 0 in the official code; its output is reused by every layer.
        self.relative_attention_bias = nn.Embedding(num_buckets, cfg.num_heads)
        nn.init.uniform_(self.relative_attention_bias.weight, -0.05, 0.05)  # Keras `Embedding`'s default
        self.layers = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)

    def position_bias(self, n: int, device: torch.device) -> torch.Tensor:
        """`[1, H, N, N]` relative position bias (without the mask)."""
        pos = torch.arange(n, device=device)
        rel = pos[None, :] - pos[:, None]  # memory - query
        bucket = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dropout(x)
        bias = self.position_bias(x.shape[1], x.device)
        if mask is not None:
            bias = bias + attention_bias_from_mask(mask, bias.dtype)
        x = self._run_blocks(x, bias)
        return self.dropout(self.final_layer_norm(x))
