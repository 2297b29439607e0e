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
from collections import Counter
import os


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
# Helpers shared by the downstream commands (embed, eval, visualize)
# --------------------------------------------------------------------------------------------------

def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path-column", help="manifest column with the file paths (default: the first of "
                                              "video, path, filename, file, audio, filepath)")
    parser.add_argument("--caption-column", help="manifest column with captions (default: captions, caption or text)")
    parser.add_argument("--root", help="folder that relative manifest paths start from (default: the manifest's)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep manifest rows whose COLUMN equals VALUE (repeatable; VALUE may be a,b)")


def add_fps_argument(parser: argparse.ArgumentParser) -> None:
    """The same frame-rate default in every command: the model's input spec (`vatt.embed.clip_spec`)."""
    from vatt.embed import DEFAULT_FPS
    parser.add_argument("--fps", type=float, default=None,
                        help=f"frame rate of the sampled frames (default: the model's input spec, {DEFAULT_FPS:g} fps, "
                             "the official pre-training rate; the official evaluations took every 2nd frame of "
                             "25 fps sources: --fps 12.5)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="decoding processes (default: 2, or 1 on a one-core machine; 0 = decode in this process)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="fp32 (default; the official numbers) or bf16 autocast (faster on recent CPUs/GPUs)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--vocab", help="word vocabulary for captions, if the model folder has no vocab.txt")


def parse_where(items: list[str]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where expects COLUMN=VALUE, got {item!r}")
        where.setdefault(key.strip(), []).extend(v.strip() for v in value.split(","))
    return where


def media_error(err: Exception, hint: str = " (--skip-bad leaves such files out and lists them)") -> ValueError:
    """A MediaError as the one-line error the CLI prints (the dispatcher reports ValueErrors)."""
    return ValueError(f"{err}{hint}")


def model_folder(path: str):
    """A model folder as given, or the latest checkpoint of a run folder (`vatt pretrain`, `vatt demo`)."""
    from pathlib import Path

    from vatt.checkpoint.io import CONFIG
    from vatt.engine.checkpoint import latest_checkpoint

    folder = Path(path)
    if (folder / CONFIG).is_file():
        return folder
    latest = latest_checkpoint(folder / "checkpoints") or latest_checkpoint(folder / "run" / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a model folder (config.json + model.safetensors) nor a run folder "
                                "with checkpoints/step_*")
    return latest


def load_model(path: str, device: str = "cpu", vocab: str | None = None):
    """`vatt.load` of a model folder or a run folder's latest checkpoint, with an optional vocabulary file
    for models saved without vocab.txt."""
    from vatt.checkpoint.io import load

    model = load(model_folder(path), map_location=device)
    if vocab:
        from vatt.data.text import WordTokenizer
        model.tokenizer = WordTokenizer.from_vocab_file(vocab)
    return model


class Bar:
    """Progress driven by `(done, total)` calls from the library: a tqdm bar on a terminal, a plain line
    every 10 s where the output is a file or a pipe (`vatt.engine.progress.ConsoleProgress`)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "file"):
        from vatt.engine.progress import ConsoleProgress
        self.bar = ConsoleProgress(desc, total, unit, leave=False)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update_to(done, total)

    def close(self) -> None:
        self.bar.close()


def write_json(path, record: dict) -> str:
    import json
    import math
    from pathlib import Path

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    from vatt.atomic import write_text
    path = Path(path)
    write_text(path, json.dumps(clean(record), indent=2) + "\n", what="results")
    return str(path)


def table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    """A fixed-width text table; columns from `numeric_from` on are right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(row):
        return "  ".join(c.rjust(w) if i >= numeric_from else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])


# --------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from vatt.data.errors import MediaError
    from vatt.data.manifest import list_media
    from vatt.embed import embed_files, embed_text, model_modalities, write_embeddings

    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {out}")
    if not args.inputs and not args.text:
        raise ValueError("nothing to embed: give media files, folders or a manifest, or --text")
    if args.windows < 1:
        raise ValueError(f"--windows must be >= 1, got {args.windows}")
    t0 = time.perf_counter()
    model = load_model(args.model, args.device, args.vocab)
    left_out: Counter[str] = Counter()
    entries = list_media(args.inputs, path_column=args.path_column, caption_column=args.caption_column,
                         root=args.root, where=parse_where(args.where), left_out=left_out) if args.inputs else []
    if left_out:
        from vatt.data.manifest import format_left_out
        print(f"left out {sum(left_out.values())} file(s) of the folders: {format_left_out(left_out)}")

    files = None
    if entries:
        modalities = None if args.modalities == "auto" else tuple(args.modalities.split(","))
        bar = Bar("embedding files", len(entries))
        try:
            files = embed_files(model, [e.path for e in entries], entries=entries, modalities=modalities,
                                num_windows=args.windows, fps=args.fps, batch_size=args.batch_size,
                                precision=args.precision, num_workers=args.workers, skip_bad=args.skip_bad,
                                progress=bar)
        except MediaError as e:
            raise media_error(e) from None
        finally:
            bar.close()

    captions, caption_clip = list(args.text), [-1] * len(args.text)
    if files is not None and not args.no_captions:
        for clip, entry in enumerate(files.entries):
            captions += entry.captions
            caption_clip += [clip] * len(entry.captions)
    text = None
    if captions and "text" in model_modalities(model):
        text = embed_text(model, captions, batch_size=max(args.batch_size, 64), precision=args.precision)
    elif args.text:
        raise ValueError(f"--text given, but this {type(model).__name__} has no text tower")

    meta = {"model": str(args.model), "precision": args.precision,
            "fps": files.spec.fps if files is not None else args.fps,
            "inputs": [str(i) for i in args.inputs]}
    written = write_embeddings(out, files, text, text_clip=caption_clip if text is not None else None, meta=meta)
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
    json_path = write_json(out.with_suffix(".json"), summary)
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
