"""The `vatt` command line: a thin layer over functions a user can call from Python.

Each sub-command lives in `vatt/commands/<name>.py` and exposes `add_arguments(parser)` and
`run(args) -> int`. This module only wires them together.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from vatt.atomic import WriteFailed
from vatt.data.errors import (WORKER_DEATH_ERRORS, DataWorkerDied, is_worker_death, quiet_resource_sharer_errors,
                              worker_died)

# command name -> (module, one-line help). Only the module of the command being run is imported (with
# torch and whatever else it needs), so `vatt --help` stays fast and an optional dependency (the search
# extra, TensorFlow) only affects its own command.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vatt.commands.demo", "pre-train the tiny model on built-in sample data and compare with random init"),
    "convert-tf": ("vatt.commands.convert_tf", "convert an official TensorFlow checkpoint to safetensors"),
    "convert-vocab": ("vatt.commands.convert_vocab", "convert the official vocabulary / word2vec files to safetensors"),
    "sample-data": ("vatt.commands.sample_data", "write a deterministic sample dataset of real encoded media"),
    "shard": ("vatt.commands.shard", "pack a manifest into WebDataset tar shards"),
    "vocab": ("vatt.commands.vocab", "build a word vocabulary (vocab.txt) from the captions of a manifest or shards"),
    "pretrain": ("vatt.commands.pretrain", "self-supervised pre-training from a YAML config"),
    "finetune": ("vatt.commands.finetune", "fine-tune a video, audio or image classifier"),
    "embed": ("vatt.commands.embed", "write embeddings of video, audio or text files"),
    "eval": ("vatt.commands.evaluate", "evaluation protocols: retrieval, linear-probe"),
    "visualize": ("vatt.commands.visualize", "t-SNE / PCA pictures of features and similarity heat maps"),
    "index": ("vatt.commands.index", "index the windows of media files for search by text, sound or example"),
    "search": ("vatt.commands.search", "find moments in an index by a sentence, a sound or a video clip"),
    "serve": ("vatt.commands.serve", "a local search page over an index (needs the search extra)"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of the command named in `argv` (all commands' when None) are filled in."""
    parser = argparse.ArgumentParser(prog="vatt", description="VATT: Video-Audio-Text Transformer in PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (module_name, help_text) in _available().items():
        if wanted is not None and name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_resource_sharer_errors()  # a dead data worker is reported once, below, not as a thread's traceback
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (WriteFailed, DataWorkerDied, *WORKER_DEATH_ERRORS) as e:
        # The run could not go on (disk full, a worker killed); the message says what was kept and how to go on.
        if os.environ.get("VATT_DEBUG") or not isinstance(e, (WriteFailed, DataWorkerDied)) and not is_worker_death(e):
            raise
        if not isinstance(e, (WriteFailed, DataWorkerDied)):  # a loader without a message of its own
            e = worker_died(e, "Nothing more was written: run the command again.")
        print(f"vatt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError, FileNotFoundError, ImportError) as e:
        # Bad input or configuration: one clear line, no traceback (VATT_DEBUG=1 shows it).
        if os.environ.get("VATT_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if type(e).__name__ == "MissingVocabulary":  # vatt.embed's; its message speaks to Python users
            msg = ("the model folder has no vocab.txt, so its captions cannot be tokenized: pass --vocab FILE (the "
                   "vocabulary it was trained with; `vatt vocab MANIFEST --out vocab.txt` builds one from captions)")
        print(f"vatt {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
