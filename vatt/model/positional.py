"""Learned factorised positional embeddings (`SpatioTemporalEmbeddings`, `common/transformers.py`).

One learned table per axis (temporal, vertical, horizontal, ...). The positional code of a token is
`LayerNorm(E_t[t] + E_h[h] + E_w[w])` -- the LayerNorm acts on the summed positional code, never on the
tokens -- and is then added to the tokens, followed by dropout.

When an input grid differs from the table size along an axis (another resolution, clip length, single
images), the whole table is resampled along that axis by the polyharmonic spline the official
`ExpandableEmbedding` uses (`tfa.image.interpolate_spline`, order 3). The same resampling resizes a
checkpoint's tables on load (`resize_table`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vatt.model.dropout import Dropout


def _phi(squared_distance: torch.Tensor) -> torch.Tensor:
    # Order-3 polyharmonic kernel exactly as TF Addons writes it: max(r^2, 1e-10) ** 1.5, so the diagonal
    # is 1e-15 rather than 0.
    return squared_distance.clamp_min(1e-10).pow(1.5)


def resize_table(table: torch.Tensor, target: int) -> torch.Tensor:
    """Resample a positional table `[n, d]` to `[target, d]` with the official cubic polyharmonic spline.

    Train points are i/n (i < n), query points j/target (j < target): both grids are left-aligned, so
    position 0 always keeps row 0. The spline has a linear polynomial term and no regularisation. The
    system is solved in float64 (TF solves it in float32; on the parity data the two agree to ~1e-7).
    """
    n, _ = table.shape
    if target == n:
        return table
    dtype = table.dtype
    x = torch.arange(n, dtype=torch.float64, device=table.device) / n  # [n]
    q = torch.arange(target, dtype=torch.float64, device=table.device) / target  # [target]
    f = table.to(torch.float64)
    if n == 1:  # a single point: the spline is the constant
        return f.expand(target, -1).to(dtype)
    a = _phi((x[:, None] - x[None, :]) ** 2)  # [n, n]
    b = torch.stack([x, torch.ones_like(x)], dim=1)  # [n, 2]: linear term (x, 1), TF's column order
    lhs = torch.cat([torch.cat([a, b], 1), torch.cat([b.T, torch.zeros(2, 2, dtype=a.dtype, device=a.device)], 1)], 0)
    rhs = torch.cat([f, torch.zeros(2, f.shape[1], dtype=f.dtype, device=f.device)], 0)
    coef = torch.linalg.solve(lhs, rhs)  # [n + 2, d]
    w, v = coef[:n], coef[n:]
    out = _phi((q[:, None] - x[None, :]) ** 2) @ w + torch.stack([q, torch.ones_like(q)], 1) @ v
    return out.to(dtype)


class FactorizedPositionalEmbedding(nn.Module):
    """Separate learned tables per axis, summed over the grid, LayerNorm on the sum, added, dropout.

    Input tokens are laid out on a grid `[B, *grid, D]` (e.g. `[B, t, h, w, D]`); the output is flattened
    row-major to `[B, prod(grid), D]`, the official token order.
    """

    def __init__(self, axes: Sequence[str], max_buckets: Sequence[int], d_model: int,
                 layer_norm_eps: float = 1e-6, dropout_rate: float = 0.1):
        super().__init__()
        if len(axes) != len(max_buckets):
            raise ValueError(f"one bucket count per axis: axes={list(axes)} max_buckets={list(max_buckets)}")
        self.axes = tuple(axes)
        self.max_buckets = tuple(int(n) for n in max_buckets)
        self.tables = nn.ParameterDict({a: nn.Parameter(torch.empty(n, d_model)) for a, n in zip(axes, max_buckets)})
        self.layer_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = Dropout(dropout_rate)
        for t in self.tables.values():
            nn.init.trunc_normal_(t, std=d_model**-0.5, a=-2 * d_model**-0.5, b=2 * d_model**-0.5)

    def table(self, axis: str, size: int) -> torch.Tensor:
        """The table of `axis` at `size` positions (resampled when it differs from the learned size)."""
        return resize_table(self.tables[axis], size)

    def code(self, grid: Sequence[int]) -> torch.Tensor:
        """The positional code `LayerNorm(sum of tables)` for a grid, flattened: `[prod(grid), D]`."""
        if len(grid) != len(self.axes):
            raise ValueError(f"expected a {len(self.axes)}-d grid ({', '.join(self.axes)}), got {tuple(grid)}")
        total = None
        for i, (axis, size) in enumerate(zip(self.axes, grid)):
            t = self.table(axis, int(size))  # [size, D]
            shape = [1] * len(grid) + [t.shape[-1]]
            shape[i] = int(size)
            t = t.reshape(shape)
            total = t if total is None else total + t
        return self.layer_norm(total.reshape(-1, total.shape[-1]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, *grid, D]` tokens -> `[B, prod(grid), D]` tokens with positions added (then dropout)."""
        grid = tokens.shape[1:-1]
        pos = self.code(grid).to(tokens.dtype)
        return self.dropout(tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]) + pos)
