"""Index the moments of media files for search by text, sound or example (see `vatt search`, `vatt serve`).

    vatt index MODEL_DIR clips/ talk.mp4 --out my_index              # windows of half a clip apart
    vatt index MODEL_DIR clips/ --out my_index --stride 1.0          # a window every second
    vatt index MODEL_DIR clips/ --out my_index                       # again: only new or changed files
    torchrun --nproc_per_node 4 -m vatt index MODEL_DIR clips/ --out my_index   # files split across ranks

Each file is cut into windows of the model's clip length starting every --stride seconds; each window
gets its video and audio embeddings and a thumbnail, stored as Parquet shards plus manifest.json in
--out (the layout is in the README). Running it again embeds only files that are new or changed (size,
modification time) and drops those that are gone; a killed run resumes where it stopped.
Undecodable files are listed with their reason and left out.
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext

from vatt.checkpoint.io import load_model
from vatt.commands.arguments import add_run_arguments, resolve_precision, table
from vatt.distributed import init_distributed, shutdown_distributed
from vatt.engine.progress import ConsoleProgress
from vatt.index import build_index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("model", help="a vatt model folder (tx_fac / ut_fac: model.safetensors + config.json)")
    parser.add_argument("inputs", nargs="+", help="media files, folders (searched recursively) or manifests")
    parser.add_argument("--out", required=True, help="index folder (created, or updated if it is an index)")
    parser.add_argument("--stride", type=float, default=None,
                        help="seconds between window starts (default: half the model's clip length)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the sampled frames (default 10)")
    parser.add_argument("--ann", action="store_true",
                        help="also build FAISS indexes for approximate search of large collections (reports their "
                             "recall@10 against exact search; needs faiss-cpu, the search extra)")
    parser.add_argument("--shard-windows", type=int, default=4096,
                        help="windows per Parquet shard, the unit of commit (default 4096; a shard holds whole files)")
    parser.add_argument("--path-column", help="manifest column with the file paths")
    parser.add_argument("--root", help="folder that relative manifest paths start from (default: the manifest's)")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    resolve_precision(args)
    env = init_distributed("cuda" if args.device.startswith("cuda") else "cpu")
    try:
        model = load_model(args.model, args.device if env.world_size == 1 else env.device, args.vocab)
        with ConsoleProgress("indexing files", None, "file", leave=False) if env.rank == 0 else nullcontext() as bar:
            report = build_index(model, args.inputs, args.out, model_path=args.model, stride_s=args.stride,
                                 fps=args.fps, batch_size=args.batch_size, precision=args.precision,
                                 num_workers=args.workers, shard_windows=args.shard_windows, progress=bar,
                                 path_column=args.path_column, root=args.root, ann=args.ann)
    finally:
        shutdown_distributed(env)
    if env.rank != 0:
        return 0
    m = report.manifest
    c = m["counts"]
    p = m["protocol"]
    print(table(["", "files", "windows"], [
        ["embedded now", report.embedded_files, "-"],
        ["unchanged", report.unchanged_files, "-"],
        ["dropped (gone or changed)", len(report.dropped_files), "-"],
        ["in the index", c["files"], c["windows"]],
        ["with video / with audio", "-", f"{c['video_windows']} / {c['audio_windows']}"],
        ["undecodable (left out)", c["errors"], "-"]]))
    print(f"windows: {p['clip_s']:g} s of video ({p['num_frames']} frames at {p['fps']:g} fps, {p['size']}x{p['size']})"
          + (f", {p['audio_clip_s']:g} s of audio" if p.get("audio_clip_s") else "")
          + f", a window every {p['stride_s']:g} s, embedded in {p.get('precision', 'fp32')}")
    if report.removed_orphans:
        print(f"removed {len(report.removed_orphans)} shard(s) left by an interrupted run (their files were embedded again)")
    if m.get("ann"):
        for column, info in m["ann"]["columns"].items():
            print(f"FAISS {column}: IVF-Flat, {info['nlist']} lists, {info['nprobe']} probed: recall@10 against exact "
                  f"search {100 * info['recall@10']:.1f} % ({info['queries']} queries from the index)")
    for path, e in report.errors.items():
        print(f"  skipped {e['message']}")
    print(f"wrote {args.out} in {report.seconds:.1f} s")
    return 0
