"""Write embeddings of video, audio and text files: pooled features and common-space (va / vt) embeddings.

    vatt embed MODEL_DIR clips/ --out emb.npz                   # every video/audio file under clips/
    vatt embed MODEL_DIR a.mp4 b.wav --out emb.npz --windows 4  # 4 linearly spaced windows per file
    vatt embed MODEL_DIR manifest.csv --out emb.npz             # paths (+ captions) from a CSV / JSON Lines
    vatt embed MODEL_DIR --text "a dog runs" --text "rain" --out text.npz

Writes emb.npz (arrays: video_features, video_va, video_vt, audio_features, audio_va, text_features, text_vt,
and per row its path, window, start and end time), emb.csv (one row per file window, for pandas),
emb.text.csv (captions) and emb.json (what was done). Files are embedded with what they have (video,
audio or both) unless --modalities says otherwise; captions are only used when a manifest has them.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from vatt.atomic import write_json
from vatt.checkpoint.io import load_model
from vatt.commands.arguments import (add_fps_argument, add_media_arguments, add_run_arguments, media_error, parse_where,
                                     resolve_precision, table)
from vatt.data.errors import MediaError
from vatt.data.manifest import format_left_out, list_media
from vatt.embed import embed_entries
from vatt.embedding_files import write_embeddings
from vatt.engine.progress import ConsoleProgress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("model", help="a vatt model folder (model.safetensors + config.json [+ vocab.txt])")
    parser.add_argument("inputs", nargs="*", help="media files, folders (searched recursively) or manifests "
                                                  "(.csv/.tsv/.jsonl with a path column and optional captions)")
    parser.add_argument("--out", required=True, help="output .npz (an index .csv and a .json are written beside it)")
    parser.add_argument("--text", action="append", default=[], metavar="CAPTION",
                        help="a caption to embed (repeatable); needs a model with a text tower")
    add_media_arguments(parser)
    parser.add_argument("--modalities", default="auto", choices=["auto", "video", "audio", "video,audio"],
                        metavar="{auto,video,audio,video+audio}", type=lambda v: v.replace("+", ","),
                        help="auto (default): what each file has; video / audio: require that stream; "
                             "video,audio (or video+audio): require video, add audio where present")
    parser.add_argument("--no-captions", action="store_true", help="do not embed the captions of a manifest")
    parser.add_argument("--windows", type=int, default=1,
                        help="windows per file: 1 = the middle one (default), W > 1 = W linearly spaced ones "
                             "(the official test protocol uses 4)")
    add_fps_argument(parser)
    add_run_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out files that cannot be decoded (counted and listed) instead of stopping")


# --------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {out}")
    if not args.inputs and not args.text:
        raise ValueError("nothing to embed: give media files, folders or a manifest, or --text")
    if args.windows < 1:
        raise ValueError(f"--windows must be >= 1, got {args.windows}")
    resolve_precision(args)
    t0 = time.perf_counter()
    model = load_model(args.model, args.device, args.vocab)
    left_out: Counter[str] = Counter()
    entries = list_media(args.inputs, path_column=args.path_column, caption_column=args.caption_column,
                         root=args.root, where=parse_where(args.where), left_out=left_out) if args.inputs else []
    if left_out:
        print(f"left out {sum(left_out.values())} file(s) of the folders: {format_left_out(left_out)}")
    modalities = None if args.modalities == "auto" else tuple(args.modalities.split(","))
    try:
        with ConsoleProgress("embedding files", len(entries), "file", leave=False) if entries else nullcontext() as bar:
            result = embed_entries(model, entries, captions="none" if args.no_captions else "all", texts=args.text,
                                   text_batch_size=max(args.batch_size, 64), progress=bar, modalities=modalities,
                                   num_windows=args.windows, fps=args.fps, batch_size=args.batch_size,
                                   precision=args.precision, num_workers=args.workers, skip_bad=args.skip_bad)
    except MediaError as e:
        raise media_error(e) from None
    files, text = result.files, result.text
    meta = {"model": str(args.model), "precision": args.precision,
            "fps": files.spec.fps if files is not None else args.fps,
            "inputs": [str(i) for i in args.inputs]}
    written = write_embeddings(out, files, text, text_clip=result.text_clip if text is not None else None, meta=meta)
    seconds = time.perf_counter() - t0

    rows = []
    if files is not None:
        for emb, has in ((files.video, files.has_video), (files.audio, files.has_audio)):
            if emb is not None and bool(has.any()):
                dims = " / ".join(f"{k} {v.shape[-1]}" for k, v in emb.arrays().items())
                rows.append([emb.modality, int(has.sum()), int(has.sum()) * files.num_windows, dims])
    if text is not None:
        rows.append(["text", "-", len(text), " / ".join(f"{k} {v.shape[-1]}" for k, v in text.arrays().items())])
    skipped = [str(e) for e in files.errors] if files is not None else []
    summary = {
        "command": "embed", "model": str(args.model), "outputs": [str(p) for p in written],
        "num_files": len(files) if files is not None else 0, "num_captions": len(text) if text is not None else 0,
        "windows": args.windows, "window_mode": "center" if args.windows == 1 else "linspace",
        "spec": None if files is None else files.spec.__dict__, "precision": args.precision,
        "skipped_files": skipped, "seconds": round(seconds, 3),
        "modalities": {r[0]: {"files": r[1], "rows": r[2], "dims": r[3]} for r in rows},
    }
    json_path = write_json(out.with_suffix(".json"), summary, what="results", strict=True)
    print(table(["modality", "files", "rows", "dims"], rows))
    if files is not None:
        s = files.spec
        parts = []
        if s.num_frames:
            parts.append(f"video {s.num_frames} frames at {s.fps:g} fps, {s.size}x{s.size} centre crop")
        if s.audio_samples:
            parts.append(f"audio {s.audio_samples} samples at {s.sample_rate} Hz")
        print(f"windows per file: {args.windows} ({summary['window_mode']}); " + "; ".join(parts))
    if skipped:
        print(f"{len(skipped)} file(s) skipped:")
        for line in skipped:
            print(f"  {line}")
    print(f"wrote {', '.join(str(p) for p in written)}, {json_path} in {seconds:.1f} s")
    return 0
