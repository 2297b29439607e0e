"""Convert an official VATT TensorFlow checkpoint to a vatt model folder (model.safetensors + config.json).

    vatt convert-tf <checkpoint-prefix> --preset tx_fac_bbs --out converted/bbs
    vatt convert-tf <checkpoint-prefix> --official-config config.json --out converted/mine

    vatt convert-tf <checkpoint-prefix> --official-config config.json --optimizer-state --out runs/resumed
        # a pre-training checkpoint with its Adam state -> runs/resumed/checkpoints/step_<iter>/, which
        # `vatt pretrain --resume --set run.output_dir=runs/resumed` continues where the official run stopped

The checkpoint prefix is the path without `.index` / `.data-*` (e.g. `.../ckpt-500000`). Reading needs no
TensorFlow; `--reader tf` reads with TensorFlow's own reader instead (`pip install "vatt[tf]"`), as a cross-check.
"""
from __future__ import annotations

import argparse
import json

from vatt import configs
from vatt.checkpoint.convert_tf import convert_tf_checkpoint
from vatt.checkpoint.io import load_state, save
from vatt.checkpoint.official_config import from_official_config
from vatt.checkpoint.optimizer_state import write_training_checkpoint
from vatt.data.text import WordTokenizer
from vatt.model.factory import build_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="TF checkpoint prefix, e.g. path/to/ckpt-500000")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="model preset the checkpoint belongs to (see `vatt.configs.PRESETS`), "
                                      "e.g. tx_fac_bbs, tx_fac_mbs, tx_fac_lbs, ut_fac_medium, vit_base_classifier")
    src.add_argument("--official-config", help="a JSON of the official resolved config (as in the parity folders)")
    p.add_argument("--num-classes", type=int, help="classifier presets: number of classes of the checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--optimizer-state", action="store_true",
                   help="pre-training checkpoints: also convert the Adam state and step counter, and write a training "
                        "checkpoint OUT/checkpoints/step_<iter>/ that `vatt pretrain --resume` (run.output_dir=OUT) "
                        "continues")
    p.add_argument("--vocab", help="the word vocabulary the checkpoint was trained with (official: howto100m_en.txt), "
                                   "saved in the folder as vocab.txt so that it can embed captions")
    p.add_argument("--reader", choices=("native", "tf"), default="native",
                   help="checkpoint reader: native (numpy, the default) or tf (TensorFlow's, needs vatt[tf])")
    p.add_argument("--allow-missing", action="store_true",
                   help="write the model even if some parameters have no source (e.g. a new classifier head "
                        "when converting a pre-training checkpoint into a classifier)")


def run(args: argparse.Namespace) -> int:
    if args.preset:
        cfg = configs.get_preset(args.preset)
    else:
        with open(args.official_config) as f:
            cfg = from_official_config(json.load(f))
    if args.num_classes is not None:
        if not isinstance(cfg, configs.ClassifierConfig):
            raise SystemExit("--num-classes only applies to classifier presets")
        cfg.num_classes = args.num_classes
    model = build_model(cfg)
    state, report = convert_tf_checkpoint(args.checkpoint, model, reader=args.reader)
    for r in report.resized:
        print(f"resized positional table {r}")
    if report.unexpected:
        print(f"{len(report.unexpected)} checkpoint entries not used: {', '.join(report.unexpected[:10])}"
              + (" ..." if len(report.unexpected) > 10 else ""))
    if report.missing:
        print(f"{len(report.missing)} model parameters have no source in the checkpoint: "
              f"{', '.join(report.missing[:10])}" + (" ..." if len(report.missing) > 10 else ""))
        if not args.allow_missing:
            print("refusing to write an incomplete model; check --preset, or pass --allow-missing")
            return 1
    load_state(model, state)
    tokenizer = None
    if args.vocab:
        tokenizer = WordTokenizer.from_vocab_file(args.vocab)
    if args.optimizer_state:
        if not isinstance(cfg, (configs.VATTConfig, configs.UnifiedConfig)):
            print("--optimizer-state needs a pre-training model (tx_fac or ut_fac)")
            return 1
        try:
            folder = write_training_checkpoint(args.checkpoint, model, cfg, model.state_dict(), args.out)
        except ValueError as e:
            print(f"cannot convert the optimizer state: {e}")
            return 1
        print(f"wrote training checkpoint {folder} (weights, Adam state, step); continue it with "
              f"`vatt pretrain --resume --set run.output_dir={args.out}`")
        return 0
    out = save(model, args.out, cfg, tokenizer=tokenizer)
    print(f"wrote {out}/model.safetensors and {out}/config.json" + (" and vocab.txt" if tokenizer else "")
          + f" ({len(state)} tensors)")
    if tokenizer is None and getattr(cfg, "kind", None) in ("tx_fac", "ut_fac"):
        print("note: no --vocab, so the folder has no vocab.txt; to embed captions, convert again with "
              "--vocab misc/howto100m_en.txt (the official vocabulary), or pass --vocab to the commands that use it")
    return 0
