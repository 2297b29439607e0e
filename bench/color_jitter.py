"""Colour jitter cost: `vatt.data.transforms.color_jitter` against the previous implementation (kept here as the
baseline and as the reference the tests compare values with), timed alternately in the same process.

    python bench/color_jitter.py             # 24 pairs on 32 x 224^2 clips, one thread
    python bench/color_jitter.py --pairs 8   # quick

The previous implementation computes TF's HSV kernels one frame at a time with bool masks, `torch.where` and
`torch.remainder`; the current one the same floats two frames at a time with float arithmetic only, every
step writing into work planes allocated once per clip, and the result written back to interleaved RGB one
channel at a time (see the comments in `vatt/data/transforms.py`). Both draw the same parameters from the generator, so for equal
seeds the outputs are compared for equality here too. Times are CPU time per clip (one thread), paired so
that other load on the machine affects both sides alike.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vatt.data.transforms import _contrast_planes, _per_video, _planes, color_jitter, jitter_draws  # noqa: E402


def _reference_saturation(p: torch.Tensor, factor: float) -> torch.Tensor:
    v = p.amax(dim=0)
    spread = v - p.amin(dim=0)
    scale = torch.where(spread > 0, v / spread.clamp_min(1e-12), torch.full_like(v, math.inf))
    scale = scale.clamp_(max=factor)
    scale = torch.where(v > 0, scale, torch.zeros_like(v))
    return v - (v - p) * scale


def _reference_hue(p: torch.Tensor, delta: float) -> torch.Tensor:
    r, g, b = p[0], p[1], p[2]
    v = p.amax(dim=0)
    spread = v - p.amin(dim=0)
    norm = 1.0 / (6.0 * spread.clamp_min(1e-12))
    h = torch.where(r == v, norm * (g - b),
                    torch.where(g == v, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0))
    h = torch.remainder(h + delta, 1.0)
    spread = torch.where(v > 0, spread, torch.zeros_like(spread))
    out = torch.empty_like(p)
    for i, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(6.0 * h + n, 6.0)
        out[i] = v - spread * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return out


def reference_color_jitter(x: torch.Tensor, rng: torch.Generator | None, prob: float = 0.8,
                           brightness: float = 32.0 / 255.0, saturation: tuple[float, float] = (0.6, 1.4),
                           contrast: tuple[float, float] = (0.6, 1.4), hue: float = 0.2) -> torch.Tensor:
    """The previous `color_jitter` (frames in [-1, 1]), unchanged but for the in-place contrast helper."""
    def one(v):
        applies, delta_b, f_sat, f_con, delta_h = jitter_draws(rng, prob, brightness, saturation, contrast, hue)
        if not applies:
            return v
        out = torch.empty_like(v)
        for t in range(v.shape[0]):
            p = _planes(v[t]).add_(1.0).mul_(0.5)
            p = _reference_saturation(p.add_(delta_b), f_sat)
            p = _reference_hue(_contrast_planes(p, f_con), delta_h).clamp_(0.0, 1.0)
            out[t] = p.mul_(2.0).sub_(1.0).movedim(0, -1)
        return out

    return _per_video(one, x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clip = torch.rand(32, 224, 224, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    new_t, old_t, equal = [], [], True
    for i in range(args.pairs + 1):
        for fn, times in ((color_jitter, new_t), (reference_color_jitter, old_t)):
            start = time.process_time()
            out = fn(clip, torch.Generator().manual_seed(i), prob=1.0)
            if i:  # the first pair warms up
                times.append(time.process_time() - start)
            if fn is color_jitter:
                new = out
        equal = equal and torch.equal(new, out)
    load = os.getloadavg()[0]
    print(f"colour jitter, 32 x 224^2 clip, 1 thread, load average {load:.1f}: current "
          f"{statistics.median(new_t) * 1e3:.1f} ms, previous {statistics.median(old_t) * 1e3:.1f} ms CPU per clip "
          f"(medians of {args.pairs} pairs) -> {statistics.median(old_t) / statistics.median(new_t):.2f}x cheaper; "
          f"outputs {'identical' if equal else 'DIFFERENT'} for equal seeds")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
