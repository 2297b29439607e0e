"""Write a deterministic sample dataset of real encoded media (H.264 + AAC mp4) with a manifest.

Coloured shapes move across the frame while a tone sounds whose pitch, timbre and beat follow the
colour, shape and motion; each clip's caption names them. See `vatt.data.sample_data`.
"""
from __future__ import annotations

import argparse
import os
import time

from vatt.data.sample_data import SampleDataConfig, write_sample_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write videos/, manifest.csv and labels.txt into")
    parser.add_argument("--num-clips", type=int, default=64, help="number of clips (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the wording and per-clip variation (default: 0)")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels, even (default: 64)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate (default: 10)")
    parser.add_argument("--duration", type=float, default=4.0, help="clip length in seconds (default: 4.0)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate in Hz (default: 16000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="encoding processes (default: one per CPU core; 0 encodes in this process)")


def run(args: argparse.Namespace) -> int:
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    config = SampleDataConfig(size=args.size, fps=args.fps, duration_s=args.duration, sample_rate=args.sample_rate)
    step = max(args.num_clips // 10, 1)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"  {done}/{total} clips", flush=True)

    t0 = time.perf_counter()
    manifest = write_sample_dataset(args.out_dir, num_clips=args.num_clips, seed=args.seed, config=config,
                                    num_workers=workers if args.num_clips > 1 else 0, progress=progress)
    seconds = time.perf_counter() - t0
    print(f"wrote {args.num_clips} clips in {seconds:.1f} s ({args.num_clips / seconds:.1f} clips/s); "
          f"manifest: {manifest}")
    return 0
