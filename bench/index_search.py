"""Indexing and search speed: `vatt index` against the model alone, exact search against FAISS.

1. Indexing: long sample files (sample clips back to back) are indexed by `build_index` with DataLoader
   workers decoding while the model runs; baseline, measured in the same run: the model's forward alone
   (video and audio towers, the FAC head, the audio va->vt projection) on the very same windows, decoded
   beforehand into memory, with the same batch size. The ratio says how well decoding hides behind compute.
2. Search on `--vectors` (default 10^6) synthetic vectors of `--dim` (default 256, the vt space of the
   official models): a mixture of 1000 Gaussian clusters, L2-normalised, as embeddings of real
   collections cluster; exact search is one matrix product; FAISS is the IVF-Flat index `vatt index
   --ann` builds. Per-query latency (one query at a time, median) and recall@10 of FAISS against exact,
   on queries drawn from the same mixture.

    python bench/index_search.py                                   # a few minutes on 2 cores
    python bench/index_search.py --files 4 --vectors 100000        # quick run
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import vatt  # noqa: E402
from vatt.data.sample_data import describe_clip, render_audio, render_video, write_mp4  # noqa: E402
from vatt.configs import input_spec  # noqa: E402
from vatt.inference import forward_modality  # noqa: E402
from vatt.index import build_index  # noqa: E402
from vatt.index.ann import build_ivf, recall_at  # noqa: E402
from vatt.index.build import audio_to_vt, protocol  # noqa: E402
from vatt.index.windows import SegmentDataset, plan_segments  # noqa: E402


def write_files(folder: Path, files: int, clips_per_file: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        parts = [describe_clip(f * clips_per_file + c) for c in range(clips_per_file)]
        frames = np.concatenate([render_video(c, size=size, duration_s=4.0) for c in parts])
        audio = np.concatenate([render_audio(c, sample_rate=16000, duration_s=4.0) for c in parts])
        path = folder / f"long{f:02d}.mp4"
        write_mp4(path, frames, audio)
        paths.append(path)
    return paths


def bench_indexing(args) -> dict:
    torch.manual_seed(0)
    model = vatt.build_model(args.preset).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_files(tmp / "media", args.files, args.clips_per_file, args.size)
        t = time.perf_counter()
        report = build_index(model, [tmp / "media"], tmp / "idx", batch_size=args.batch_size,
                             num_workers=args.workers)
        index_s = time.perf_counter() - t
        windows = report.manifest["counts"]["windows"]

        # The same windows, decoded beforehand; the model alone.
        from vatt.data import decoding
        spec = input_spec(model)
        stride = protocol(model, None, spec.fps)["stride_s"]
        segments = []
        for i, p in enumerate(paths):
            segments += plan_segments(i, str(p), decoding.probe(p), spec, stride, True, True)
        items = [SegmentDataset(segments, spec)[i] for i in range(len(segments))]
        video = torch.cat([it["video"] for it in items])
        audio = torch.cat([it["audio"] for it in items])
        assert video.shape[0] == windows
        t = time.perf_counter()
        for lo in range(0, windows, args.batch_size):
            forward_modality(model, "video", video[lo:lo + args.batch_size])
            va = forward_modality(model, "audio", audio[lo:lo + args.batch_size])["va"]
            audio_to_vt(model, va)
        forward_s = time.perf_counter() - t
    return {"windows": windows, "index_windows_per_s": windows / index_s, "forward_windows_per_s": windows / forward_s,
            "ratio": forward_s / index_s}


def bench_search(args) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)

    def draw(n):
        x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, args.dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    x = np.concatenate([draw(100_000) for _ in range(args.vectors // 100_000)] + [draw(args.vectors % 100_000)])
    queries = draw(args.queries)
    t = time.perf_counter()
    ivf = build_ivf(x)
    build_s = time.perf_counter() - t

    def latency(fn) -> float:
        times = []
        for q in queries[:args.timed_queries]:
            t = time.perf_counter()
            fn(q)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    exact_s = latency(lambda q: np.argpartition(-(x @ q), 10)[:10])
    ann_s = latency(lambda q: ivf.search(q[None], 10))
    recall = recall_at(ivf, x, queries)
    return {"vectors": len(x), "dim": args.dim, "nlist": ivf.nlist, "nprobe": ivf.nprobe, "build_s": build_s,
            "exact_ms": 1000 * exact_s, "faiss_ms": 1000 * ann_s, "recall@10": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tx_fac_tiny")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--clips-per-file", type=int, default=5, help="4 s sample clips per file")
    parser.add_argument("--size", type=int, default=128, help="frame size of the sample files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--timed-queries", type=int, default=30)
    parser.add_argument("--skip-indexing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_indexing:
        r = bench_indexing(args)
        print(f"indexing ({args.preset}, {r['windows']} windows, {args.workers} decoding workers, batch {args.batch_size}): "
              f"{r['index_windows_per_s']:.1f} windows/s; the model alone on the same windows "
              f"{r['forward_windows_per_s']:.1f} windows/s; ratio {r['ratio']:.2f}", flush=True)
    r = bench_search(args)
    print(f"search over {r['vectors']:,} vectors of {r['dim']}: exact (matrix product) {r['exact_ms']:.1f} ms/query; "
          f"FAISS IVF-Flat ({r['nlist']} lists, {r['nprobe']} probed, built in {r['build_s']:.0f} s) "
          f"{r['faiss_ms']:.2f} ms/query, recall@10 {100 * r['recall@10']:.1f} %")


if __name__ == "__main__":
    main()
