"""Forward + backward speed of the video backbone, with baselines measured in the same run.

    python bench/model_speed.py                 # tiny and Base (32 x 224^2), fp32 / bf16, DropToken on / off
    python bench/model_speed.py --sizes tiny    # quick

For each configuration: seconds per clip for one training step of the backbone (forward + backward,
train mode: dropout and DropToken as configured), the achieved FLOP/s, and that as a fraction of the
FLOP/s of a 2048^3 fp32 matrix product measured in this process (the yardstick the project uses).
Ratios between configurations are printed too, and a baseline measured in the same run: a plain
`torch.nn.TransformerEncoder` of the same size on the same number of tokens. FLOPs count the matrix products (patch projection,
q/k/v/o, MLP, attention scores and values), forward x 3 for forward + backward.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vatt import configs  # noqa: E402
from vatt.model.backbones import video_transformer  # noqa: E402

SIZES = {
    # name: (video config, frames, height/width)
    "tiny": (lambda: configs.get_preset("tx_fac_tiny").video, 8, 64),
    "base": (lambda: configs.vit("base"), 32, 224),
}


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def flop_counter():
    """torch's FlopCounterMode, also counting the CPU flash-attention kernels (SDPA without dropout on CPU),
    which it does not know: the same formula as its other SDPA kernels."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def step_flops(cfg, frames: int, size: int, droptoken: bool) -> float:
    """Matrix-product FLOPs of forward + backward for one clip."""
    tx = cfg.transformer
    grid = (frames // cfg.temporal_patch_size) * (size // cfg.spatial_patch_size) ** 2
    tokens = (min(grid, int(cfg.droptoken.keep_rate * grid)) if droptoken else grid) + 1  # + AGG
    inner = tx.num_heads * tx.d_kv
    patch = grid * cfg.temporal_patch_size * cfg.spatial_patch_size**2 * 3 * tx.d_model
    per_layer = tokens * tx.d_model * inner * 4 + tokens * tx.d_model * tx.d_ff * 2 + 2 * tokens**2 * inner
    forward = 2 * (patch + tx.num_layers * per_layer)
    return 3 * forward


def time_step(model, video: torch.Tensor, dtype: torch.dtype, steps: int) -> float:
    def one():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(video)
        out.features_pooled.float().square().mean().backward()

    one()  # warm-up (allocations, oneDNN kernel selection)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def plain_encoder_step(cfg, frames: int, size: int, batch: int, dtype: torch.dtype, steps: int) -> tuple[float, float]:
    """Baseline: `torch.nn.TransformerEncoder` (pre-norm, GELU, dropout 0.1) on the same token count.

    Returns (seconds per clip, FLOPs per clip) for forward + backward of the encoder alone.
    """
    tx = cfg.transformer
    grid = (frames // cfg.temporal_patch_size) * (size // cfg.spatial_patch_size) ** 2
    tokens = int(cfg.droptoken.keep_rate * grid) + 1 if cfg.droptoken.enabled else grid + 1
    layer = torch.nn.TransformerEncoderLayer(tx.d_model, tx.num_heads, tx.d_ff, dropout=tx.dropout_rate,
                                             activation="gelu", batch_first=True, norm_first=True)
    enc = torch.nn.TransformerEncoder(layer, tx.num_layers, enable_nested_tensor=False).train()
    x = torch.randn(batch, tokens, tx.d_model)

    def one():
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = enc(x)
        out[:, 0].float().square().mean().backward()

    one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    inner = tx.num_heads * tx.d_kv
    flops = 3 * 2 * tx.num_layers * (tokens * tx.d_model * inner * 4 + tokens * tx.d_model * tx.d_ff * 2
                                     + 2 * tokens**2 * inner)
    return (time.perf_counter() - start) / steps / batch, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=0, help="clips per step (default: 16 tiny, 2 base)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"2048^3 matmul: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s "
          f"({peak16 / peak32:.2f}x)")
    rows = []
    for size in args.sizes:
        make_cfg, frames, hw = SIZES[size]
        batch = args.batch or (16 if size == "tiny" else 2)
        video = torch.rand(batch, frames, hw, hw, 3) * 2 - 1
        for droptoken in (True, False):
            cfg = make_cfg()
            cfg.droptoken.enabled = droptoken
            model = video_transformer(cfg).train()
            flops = step_flops(cfg, frames, hw, droptoken)
            for dtype in (torch.float32, torch.bfloat16):
                sec = time_step(model, video, dtype, args.steps) / batch
                rows.append(dict(size=size, droptoken=droptoken, dtype=str(dtype).split(".")[-1], batch=batch,
                                 sec_per_clip=sec, gflops=flops / sec / 1e9, of_fp32_peak=flops / sec / peak32))
                r = rows[-1]
                print(f"{size:5s} droptoken={'on ' if droptoken else 'off'} {r['dtype']:8s} batch {batch:3d}: "
                      f"{sec * 1e3:9.1f} ms/clip  {r['gflops']:7.1f} GFLOP/s  = {r['of_fp32_peak']:.2f}x fp32 peak")
                if droptoken:
                    psec, pflops = plain_encoder_step(cfg, frames, hw, batch, dtype, args.steps)
                    rows.append(dict(size=size, droptoken=True, dtype=r["dtype"], batch=batch, baseline="nn.TransformerEncoder",
                                     sec_per_clip=psec, gflops=pflops / psec / 1e9, of_fp32_peak=pflops / psec / peak32))
                    p = rows[-1]
                    print(f"{'':5s} baseline: plain nn.TransformerEncoder, same tokens  {psec * 1e3:9.1f} ms/clip  "
                          f"{p['gflops']:7.1f} GFLOP/s  = {p['of_fp32_peak']:.2f}x fp32 peak")
    print("\nratios (same run):")
    for size in args.sizes:
        get = {(r["droptoken"], r["dtype"]): r["sec_per_clip"] for r in rows if r["size"] == size and "baseline" not in r}
        eff = {r["dtype"]: r["of_fp32_peak"] for r in rows if r["size"] == size and r["droptoken"] and "baseline" not in r}
        base = {r["dtype"]: r["of_fp32_peak"] for r in rows if r["size"] == size and "baseline" in r}
        print(f"  {size}: achieved FLOP/s, ours / plain nn.TransformerEncoder (DropToken on): "
              f"fp32 {eff['float32'] / base['float32']:.2f}x, bf16 {eff['bfloat16'] / base['bfloat16']:.2f}x")
        print(f"  {size}: bf16 vs fp32 speed-up  DropToken on {get[(True, 'float32')] / get[(True, 'bfloat16')]:.2f}x, "
              f"off {get[(False, 'float32')] / get[(False, 'bfloat16')]:.2f}x;  "
              f"DropToken on vs off  fp32 {get[(False, 'float32')] / get[(True, 'float32')]:.2f}x, "
              f"bf16 {get[(False, 'bfloat16')] / get[(True, 'bfloat16')]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_fp32=peak32, peak_bf16=peak16, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
