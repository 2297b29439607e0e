"""Convert the official word table to safetensors, once, and check it against a vocabulary file.

    vatt convert-vocab path/to/ckpt-500000 --out misc/word2vec.safetensors [--vocab misc/howto100m_en.txt]
    vatt convert-vocab misc/word2vec.pkl --allow-pickle --out misc/word2vec.safetensors

The source is a pre-training checkpoint (read without TensorFlow; `--reader tf` to use TensorFlow's) or
the release's `word2vec.pkl`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vatt.checkpoint.tf_bundle import checkpoint_prefix
from vatt.checkpoint.word2vec import convert_word2vec_pickle, convert_word_table_from_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("word2vec", help="an official pre-training checkpoint prefix (e.g. path/to/ckpt-500000), or the "
                                    "official word2vec.pkl (a pickled dict with 'word_embeddings')")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--allow-pickle", action="store_true",
                   help="required for a pickle: confirms you trust it (loaded with an array-only unpickler)")
    p.add_argument("--reader", choices=("native", "tf"), default="native",
                   help="checkpoint reader: native (numpy, the default) or tf (TensorFlow's, needs vatt[tf])")
    p.add_argument("--vocab", help="vocabulary file (one word per line) to check the table's size against")


def run(args: argparse.Namespace) -> int:
    prefix = checkpoint_prefix(args.word2vec)
    if Path(f"{prefix}.index").exists():
        table = convert_word_table_from_checkpoint(prefix, args.out, reader=args.reader)
    else:
        try:
            table = convert_word2vec_pickle(args.word2vec, args.out, allow_pickle=args.allow_pickle)
        except PermissionError as e:
            print(f"vatt convert-vocab: {e}")
            return 2
    print(f"wrote {args.out}: word_embeddings {tuple(table.shape)}")
    if args.vocab:
        with open(args.vocab, encoding="utf-8") as f:
            words = sum(1 for line in f if line.strip())
        if words > table.shape[0]:
            print(f"warning: vocabulary has {words} words but the table only {table.shape[0]} rows")
            return 1
        print(f"vocabulary {args.vocab}: {words} words, fits the table")
    return 0
