"""Clips per second of the pre-training data pipeline, per CPU core: what decides how many cores feed one GPU.

    python bench/pipeline.py                  # 640x360 25 fps H.264 + AAC files, BBS clips, 1..N workers
    python bench/pipeline.py --clips 16       # quick

A clip is what `vatt pretrain` feeds the BBS model: `PretrainDataset` on a manifest of real files (a
random 3.2 s window: 32 frames at 10 fps, scale jitter, resize, random 224 crop, flip, normalise, colour
jitter; 153 600 samples of 48 kHz audio with noise; captions tokenized), through a DataLoader with W
worker processes and `collate`, as in training. Each worker decodes single-threaded, so clips/s per
worker is clips/s per core while W <= the core count. Baseline in the same run: bare PyAV decoding of the
same windows (`bench/decode.py`), so the pipeline's overhead over decoding alone is a ratio.
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
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decode import _Clips, bare, write_long_video  # noqa: E402
from vatt.data.pretraining import PretrainDataset  # noqa: E402
from vatt.data.sampling import collate  # noqa: E402
from vatt.data.text import WordTokenizer  # noqa: E402

CAPTIONS = ["a person plays the guitar on a stage", "a dog runs across the grass after a ball",
            "someone is cooking vegetables in a pan", "waves break on the rocks near the shore"]
BBS = dict(num_frames=32, size=224, audio_samples=153600, sample_rate=48000, fps=10.0)


def write_media(folder: Path, rows: int = 4, seconds: float = 30.0) -> Path:
    """A 640x360 25 fps H.264 + AAC video and a manifest of `rows` rows naming it, each with a caption."""
    path = folder / "v0.mp4"
    write_long_video(str(path), seconds / 60.0)
    lines = ["video,caption"] + [f"{path},{CAPTIONS[i % len(CAPTIONS)]}" for i in range(rows)]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def pipeline_clips_per_s(manifest: Path, workers: int, clips: int, batch: int = 4) -> float:
    """Clips/s of `PretrainDataset` + `collate` through a DataLoader (after the first batch)."""
    tokenizer = WordTokenizer.build(CAPTIONS)
    dataset = PretrainDataset(manifest, tokenizer, seed=0, **BBS)
    keys = [(e, i) for e in range(clips // len(dataset) + 2) for i in range(len(dataset))][: clips + batch]
    loader = DataLoader(dataset, batch_size=batch, sampler=keys, collate_fn=collate, num_workers=workers,
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up and first decode
    start, n = time.perf_counter(), 0
    for b in it:
        n += b["video"].shape[0]
    return n / (time.perf_counter() - start)


def bare_clips_per_s(video: str, workers: int, clips: int, seconds: float) -> float:
    starts = [(i * 7.3) % max(seconds - 4.0, 0.1) for i in range(clips)]
    loader = DataLoader(_Clips(bare, video, starts, {"audio": True}), batch_size=None, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return clips / (time.perf_counter() - start)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure(clips: int = 32, worker_counts: list[int] | None = None, seconds: float = 30.0) -> dict:
    """Pipeline and bare-PyAV clips/s for each worker count (default 1, 2, 4, ... up to the cores)."""
    cores = cpu_cores()
    if worker_counts is None:
        worker_counts = [w for w in (1, 2, 4, 8, 16, 32, 64, 128) if w < cores] + [cores]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_media(Path(tmp), seconds=seconds)
        rows = []
        for workers in worker_counts:
            ours = pipeline_clips_per_s(manifest, workers, clips)
            base = bare_clips_per_s(str(Path(tmp) / "v0.mp4"), workers, clips, seconds)
            rows.append({"workers": workers, "clips_per_s": ours, "clips_per_s_per_worker": ours / workers,
                         "bare_pyav_clips_per_s": base, "pipeline_cost_over_bare": base / ours})
    return {"cores": cores, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--max-workers", type=int, default=0, help="default: the cores this process may use")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    counts = None
    if args.max_workers:
        counts = [w for w in (1, 2, 4, 8, 16, 32, 64, 128) if w < args.max_workers] + [args.max_workers]
    result = measure(args.clips, counts)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {result['cores']} cores, load average {load:.1f}; "
          f"BBS clips (32x224^2, 3.2 s 48 kHz audio) from 640x360 25 fps H.264 + AAC")
    for r in result["rows"]:
        print(f"{r['workers']:3d} workers: {r['clips_per_s']:6.2f} clips/s = {r['clips_per_s_per_worker']:.2f} per "
              f"worker; bare PyAV (video + audio decoding only) {r['bare_pyav_clips_per_s']:.2f} clips/s, "
              f"pipeline / bare cost {r['pipeline_cost_over_bare']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
