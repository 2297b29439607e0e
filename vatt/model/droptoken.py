"""DropToken: keep a random subset of video / audio tokens during training (`_random_patch_selection`).

Official semantics (default): the kept count is `int(keep_rate * max_tokens)` where `max_tokens` is the
token count of the maximal bucket grid (1568 for 32x224^2 video -> 784 kept; 1200 audio -> 600), not of
the actual input; one permutation is drawn per step and shared by every clip of the batch; an input with
no more tokens than that keeps all of them. It runs only in training mode: evaluation sees every token.

`mode="per_sample"` (an option, not the official behaviour) draws an independent subset for each clip.
"""
from __future__ import annotations

import torch
from torch import nn

from vatt.configs import DropTokenConfig


class DropToken(nn.Module):
    def __init__(self, cfg: DropTokenConfig, max_tokens: int):
        super().__init__()
        self.enabled, self.mode = cfg.enabled, cfg.mode
        self.num_kept = int(cfg.keep_rate * max_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, N, D]` -> `[B, min(N, num_kept), D]` in training; unchanged in eval."""
        if not (self.training and self.enabled):
            return tokens
        b, n, d = tokens.shape
        if n <= self.num_kept:
            # The official `[:keep]` slice keeps every token of a short input; it never reaches a permuted
            # full sequence (which the backbones would lay back onto the grid in the wrong order).
            return tokens
        if self.mode == "shared":
            kept = torch.randperm(n, device=tokens.device)[: self.num_kept]
            return tokens[:, kept]
        kept = torch.rand(b, n, device=tokens.device).argsort(dim=1)[:, : self.num_kept]
        return tokens.gather(1, kept[..., None].expand(-1, -1, d))

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, num_kept={self.num_kept}, mode={self.mode!r}"
