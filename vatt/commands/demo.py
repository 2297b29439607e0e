"""Pre-train the tiny model on built-in sample data on this CPU, then compare it with its random initialisation.

    vatt demo                      # ~5 minutes on a 2-core CPU: sample data, pre-training (4 min), evaluation
    vatt demo --minutes 8 --out runs/demo8
    vatt demo --steps 600          # a fixed number of steps instead of a time budget (reproducible)
    vatt demo --serve              # then the search page on the held-out clips (http://127.0.0.1:8000)

Prints a table of zero-shot text->video and audio->video retrieval (R@1, R@5, median rank) and a linear
probe on held-out clips, for the pre-trained and the randomly initialised model, beside chance; writes
results.json and t-SNE pictures of the video features (tsne_pretrained.png, tsne_random_init.png).
Then indexes the held-out clips (index/) and prints a search by a sentence and by a sound.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from vatt.commands.serve import check_port, serve
from vatt.demo import DemoConfig, all_better, format_table, run_demo
from vatt.engine.progress import ProgressBar, TqdmLoggingHandler
from vatt.index.quality import demo_searches, index_heldout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--clips", type=int, default=640, help="sample clips to write; every fifth is held out "
                                                               "(default: 640)")
    parser.add_argument("--minutes", type=float, default=4.0,
                        help="pre-training time budget; a busier machine than measured stops it at 1.2x (default: 4)")
    parser.add_argument("--steps", type=int, default=0, help="pre-train exactly this many steps (overrides --minutes)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per step (default: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto (default): bf16 autocast where the CPU computes bf16 fast")
    parser.add_argument("--serve", action="store_true",
                        help="then open the search page (vatt serve) on the indexed held-out clips")
    parser.add_argument("--port", type=int, default=8000, help="port of the search page with --serve (default 8000)")


def run(args: argparse.Namespace) -> int:
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("vatt")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # checkpoint notices would clutter the demo's output

    start = time.perf_counter()
    cfg = DemoConfig(out_dir=args.out, num_clips=args.clips, train_minutes=args.minutes, steps=args.steps,
                     batch_size=args.batch_size, seed=args.seed, precision=args.precision)
    result = run_demo(cfg, callbacks=[ProgressBar(desc="pre-training", leave=False)],
                      report=lambda line: print(f"[{time.perf_counter() - start:5.0f} s] {line}", flush=True))
    print()
    print(format_table(result))
    print()
    phases = ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items() if name != "total")
    print(f"{result.steps} pre-training steps; wall time {result.seconds['total']:.0f} s ({phases})")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    if not all_better(result):
        print("note: the pre-trained model did not beat random initialisation on every metric "
              "(a longer --minutes usually fixes that)")
    search_demo(args, result)
    return 0


def search_demo(args: argparse.Namespace, result) -> None:
    """Index the held-out clips with the pre-trained model, print a search by a sentence and by a sound."""
    if args.serve:
        check_port("127.0.0.1", args.port)
    index_dir = Path(args.out) / "index"
    shutil.rmtree(index_dir, ignore_errors=True)  # this run's model: a new index
    index = index_heldout(result.files["checkpoint"], Path(args.out) / "data" / "manifest.csv", index_dir)
    print()
    print(f"indexed the {result.num_heldout} held-out clips into {index_dir} ({len(index)} windows); "
          f"search it with `vatt search {index_dir} \"a sentence\"` or `vatt serve {index_dir}`")
    for line in demo_searches(index, Path(args.out) / "data" / "manifest.csv"):
        print(line)
    if args.serve:
        serve(index, "127.0.0.1", args.port, open_browser=True)
