"""Build a word vocabulary (vocab.txt) from the captions of a manifest or of shards.

    vatt vocab data/sample/manifest.csv --out vocab.txt --where split=train
    vatt vocab shards/ --out vocab.txt --max-size 1024       # the tiny presets hold 1,024 words

The most frequent words after the official normalisation (lower case, punctuation stripped), with the
special tokens <pad>, <bos>, <eos>, <unk> first; one word per line, most frequent first, as the official
vocabulary files. Name it in a config (`data.vocab`) or give it to the downstream commands (`--vocab`).
`vatt shard` writes one beside the shards, and `vatt pretrain` writes the one it used into its output folder
and its checkpoints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vatt.commands.arguments import parse_where
from vatt.pretrain.data import build_vocabulary, is_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("source", help="a manifest (CSV / JSON Lines with captions) or shards written by `vatt shard` "
                                       "(a folder, a .tar or a brace pattern)")
    parser.add_argument("--out", required=True, help="the vocabulary file to write (e.g. vocab.txt)")
    parser.add_argument("--max-size", type=int, default=2**16,
                        help="entries at most, the 4 special tokens included (default 65536, the official text "
                             "vocabulary; the tiny presets hold 1024)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="manifest rows to read (repeatable; VALUE may be a,b), e.g. split=train")


def run(args: argparse.Namespace) -> int:
    where = parse_where(args.where)
    if where and is_shards(args.source):
        raise ValueError("--where selects manifest rows; shards were already selected when they were written")
    if args.max_size < 5:
        raise ValueError(f"--max-size must be >= 5 (the 4 special tokens and a word), got {args.max_size}")
    tokenizer = build_vocabulary(args.source, args.max_size, where or None)
    if tokenizer.vocab_size <= 4:
        raise ValueError(f"{args.source}: no captions to build a vocabulary from")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    print(f"wrote {out}: {tokenizer.vocab_size} entries ({tokenizer.vocab_size - 4} words and 4 special tokens) "
          f"from the captions of {args.source}")
    return 0
