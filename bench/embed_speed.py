"""Embedding speed (inference): the eval-mode forward of each tower on real decoded windows, and `vatt embed`
end to end, with the matmul peaks measured in the same process.

    python bench/embed_speed.py                  # tx_fac_bbs, fp32 and bf16 autocast
    python bench/embed_speed.py --windows 2      # quick

Windows are decoded from a 640x360 25 fps H.264 + AAC file by the embedding path itself (`vatt.embed`'s
window loader: the middle 3.2 s, 32 frames at 10 fps resized and centre-cropped to 224, 153 600 samples of
48 kHz audio); text is the tokenized captions (16 words). The forward is `vatt.inference.forward_modality`
(inference mode, eval: no DropToken, so all 1568 video tokens), timed per modality, and its matrix-product
FLOPs (torch's FlopCounterMode) per second are shown as a fraction of a 2048^3 fp32 (and bf16) matmul
measured in this process just before each row. End to end is `vatt.embed.embed_files` -- what `vatt embed` runs -- on the same
files (decoding in the main process, video and audio), against the forward alone on the same windows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.model_speed import flop_counter, matmul_peak  # noqa: E402
from bench.pipeline import CAPTIONS, write_media  # noqa: E402


def forward_flops(model, modality: str, x: torch.Tensor) -> float:
    from vatt.inference import forward_modality
    with flop_counter() as counter:
        forward_modality(model, modality, x)
    return float(counter.get_total_flops())


def time_forward(model, modality: str, x: torch.Tensor, batch: int, precision: str, repeats: int) -> float:
    """Seconds per window of `forward_modality` over `x` in batches (best of `repeats` passes)."""
    from vatt.inference import forward_modality
    forward_modality(model, modality, x[:batch], precision)  # warm-up: allocations, kernel choice
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for lo in range(0, x.shape[0], batch):
            forward_modality(model, modality, x[lo:lo + batch], precision)
        best = min(best, (time.perf_counter() - start) / x.shape[0])
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tx_fac_bbs")
    parser.add_argument("--windows", type=int, default=4, help="decoded windows (files) per measurement")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import vatt.model
    from vatt import configs
    from vatt.data.text import WordTokenizer
    from vatt.configs import input_spec
    from vatt.embed import FileWindows, embed_files

    torch.manual_seed(0)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    load = os.getloadavg()[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {load:.1f}; 2048^3 matmul: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    model = vatt.model.build_model(configs.get_preset(args.preset)).eval()
    spec = input_spec(model)
    rows, result = [], {"peak_flops": peak, "load_average": load, "preset": args.preset}
    with tempfile.TemporaryDirectory() as tmp:
        write_media(Path(tmp), rows=1)
        paths = [str(Path(tmp) / "v0.mp4")] * args.windows
        decoded = [FileWindows(paths, spec, ("video", "audio"), ("video", "audio"), 1)[i] for i in range(len(paths))]
        inputs = {"video": torch.cat([d["video"] for d in decoded]), "audio": torch.cat([d["audio"] for d in decoded])}
        tokenizer = WordTokenizer.build(CAPTIONS)
        inputs["text"] = tokenizer.encode([CAPTIONS[i % len(CAPTIONS)] for i in range(16 * args.windows)])
        for modality, x in inputs.items():
            flops = forward_flops(model, modality, x[:1])
            batch = args.batch if modality != "text" else 16 * args.batch
            for precision in ("fp32", "bf16"):
                # the yardsticks again just before each row, so a change of load between rows moves both
                peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
                sec = time_forward(model, modality, x, batch, precision, args.repeats)
                row = {"modality": modality, "precision": precision, "batch": batch, "gflop_per_window": flops / 1e9,
                       "windows_per_s": 1 / sec, "frac_fp32_peak": flops / sec / peak["fp32"],
                       "frac_bf16_peak": flops / sec / peak["bf16"], "fp32_matmul_gflop_s": peak["fp32"] / 1e9,
                       "bf16_matmul_gflop_s": peak["bf16"] / 1e9}
                rows.append(row)
                print(f"{modality:5s} {precision}: {row['windows_per_s']:8.2f} windows/s  {flops / 1e9:6.1f} GFLOP/window "
                      f"= {row['frac_fp32_peak']:.2f}x fp32 peak, {row['frac_bf16_peak']:.2f}x bf16 peak (matmul "
                      f"{peak['fp32'] / 1e9:.0f} / {peak['bf16'] / 1e9:.0f} GFLOP/s just before)", flush=True)
        result["forward"] = rows
        ends = []
        for precision in ("fp32", "bf16"):
            embed_files(model, paths[:1], modalities=("video", "audio"), batch_size=args.batch, precision=precision)
            start = time.perf_counter()
            embed_files(model, paths, modalities=("video", "audio"), batch_size=args.batch, precision=precision)
            end_to_end = len(paths) / (time.perf_counter() - start)
            fwd = {r["modality"]: r["windows_per_s"] for r in rows if r["precision"] == precision}
            forward_only = 1 / (1 / fwd["video"] + 1 / fwd["audio"])
            ends.append({"precision": precision, "windows_per_s": end_to_end, "forward_only_windows_per_s": forward_only,
                         "end_to_end_over_forward": end_to_end / forward_only})
            print(f"vatt embed (embed_files, video + audio, decoding in-process) {precision}: {end_to_end:.2f} windows/s "
                  f"= {end_to_end / forward_only:.2f}x the forward alone ({forward_only:.2f} windows/s)", flush=True)
        result["end_to_end"] = ends
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
