"""Pack a manifest into WebDataset tar shards (encoded clip bytes + JSON metadata).

The manifest is a pre-training manifest (CSV or JSON Lines with a `video` column; see
`vatt.data.manifest.read_manifest`). Files that cannot be used are left out and counted.
"""
from __future__ import annotations

import argparse

from vatt.data.errors import MediaError
from vatt.data.shards import write_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="CSV or JSONL manifest with a 'video' column")
    parser.add_argument("out_dir", help="folder for shard-NNNNNN.tar and index.json")
    parser.add_argument("--max-count", type=int, default=1000, help="samples per shard at most (default: 1000)")
    parser.add_argument("--max-size", type=float, default=1024.0, help="megabytes per shard at most (default: 1024)")
    parser.add_argument("--no-cut", action="store_true",
                        help="store whole files even for rows whose start/end cover a small part of them")
    parser.add_argument("--tail", type=float, default=3.2,
                        help="seconds kept after a row's end when cutting (default: 3.2, one official clip)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep only rows with this column value (repeatable), e.g. --where split=train")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unusable file instead of skipping it")


def run(args: argparse.Namespace) -> int:
    where: dict[str, list[str]] = {}
    for item in args.where:
        column, sep, value = item.partition("=")
        if not sep:
            print(f"error: --where takes COLUMN=VALUE, got {item!r}")
            return 2
        where.setdefault(column, []).append(value)
    try:
        report = write_shards(args.manifest, args.out_dir, max_count=args.max_count, max_size_mb=args.max_size,
                              cut_segments=not args.no_cut, tail_s=args.tail, where=where or None,
                              prefix=args.prefix, strict=args.strict)
    except (MediaError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 1
    mb = report.num_bytes / 1e6
    print(f"wrote {report.num_samples} samples ({report.num_cut} cut from longer files) into "
          f"{len(report.shards)} shards, {mb:.1f} MB, in {report.seconds:.1f} s")
    if report.skipped.total:
        print(f"left out: {report.skipped}")
    return 0
