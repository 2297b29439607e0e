"""Command-line arguments and output shared by the downstream commands (embed, eval, visualize, index, ...).

The CLI only: the library never parses argv or prints; these helpers turn arguments into the library's
parameters and its results into text.
"""
from __future__ import annotations

import argparse
import os

from vatt import precision
from vatt.configs import DEFAULT_FPS
from vatt.data.errors import MediaError


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path-column", help="manifest column with the file paths (default: the first of "
                                              "video, path, filename, file, audio, filepath)")
    parser.add_argument("--caption-column", help="manifest column with captions (default: captions, caption or text)")
    parser.add_argument("--root", help="folder that relative manifest paths start from (default: the manifest's)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep manifest rows whose COLUMN equals VALUE (repeatable; VALUE may be a,b)")


def add_fps_argument(parser: argparse.ArgumentParser) -> None:
    """The same frame-rate default in every command: the model's input spec (`vatt.configs.input_spec`)."""
    parser.add_argument("--fps", type=float, default=None,
                        help=f"frame rate of the sampled frames (default: the model's input spec, {DEFAULT_FPS:g} fps, "
                             "the official pre-training rate; the official evaluations took every 2nd frame of "
                             "25 fps sources: --fps 12.5)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="decoding processes (default: 2, or 1 on a one-core machine; 0 = decode in this process)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="fp32 (default; the official numbers), bf16 autocast (faster on recent CPUs/GPUs), or "
                             "auto: bf16 where the device computes it fast (AVX512-BF16/AMX CPUs, bf16 GPUs), else "
                             "fp32; what it chose is recorded with the results")
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


def table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    """A fixed-width text table; columns from `numeric_from` on are right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(row):
        return "  ".join(c.rjust(w) if i >= numeric_from else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])


def run_subcommand(args: argparse.Namespace) -> int:
    """Run the chosen sub-command (`set_defaults(_run=...)`); a file that cannot be used ends it with one line
    naming the file and the reason (and the --skip-bad hint where the sub-command has that flag)."""
    try:
        return args._run(args)
    except MediaError as e:
        raise (media_error(e) if hasattr(args, "skip_bad") else media_error(e, hint="")) from None


def resolve_precision(args: argparse.Namespace) -> None:
    """Decide `--precision auto` for `--device` once, before anything runs, so that every result records fp32 or
    bf16, the arithmetic that made it."""
    args.precision = precision.resolve(args.precision, args.device)
