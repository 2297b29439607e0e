"""What `vatt pretrain` and `vatt finetune` share: the experiment arguments, reading the config, and running
a training function with the console's progress and one-line errors."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable

import yaml

from vatt.engine.checkpoint import OutputDirNotEmpty
from vatt.engine.config import ConfigError
from vatt.engine.loop import TrainingDiverged
from vatt.engine.progress import TqdmLoggingHandler


def add_experiment_arguments(parser: argparse.ArgumentParser, doc: str, example: str) -> None:
    """--config, --set, --resume, --overwrite, --print-config; `doc` (the command's docstring) as the epilog."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = doc.split("\n", 1)[1]
    parser.add_argument("--config", help="YAML file with the sections model, data, optim, loss, run, checkpoint, "
                                         "log, eval (omitted sections keep their defaults: the official recipe)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help=f"override a field, e.g. {example} (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a run.output_dir that holds an earlier run, deleting its checkpoints "
                             "and logs (without this or --resume, a non-empty output folder is refused)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def load_or_report(command: str, load_config: Callable[..., Any], args: argparse.Namespace) -> tuple[Any, int | None]:
    """(config, None) to go on, or (None, exit code) when the config is bad or `--print-config` was asked."""
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"vatt {command}: config error: {e}", file=sys.stderr)
        return None, 2
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return None, 0
    return config, None


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # torchrun sets RANK; the other ranks only report errors


def run_training(command: str, train: Callable[[], Any]) -> tuple[Any, int | None]:
    """Call `train()` with log lines above the progress bar; (result, None), or (None, exit code) after a
    one-line error for a refused output folder or a diverged run."""
    main_rank = is_main_rank()
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("vatt")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if main_rank else logging.ERROR)
    try:
        return train(), None
    except OutputDirNotEmpty as e:
        if main_rank:
            print(f"vatt {command}: error: {e} (--resume continues that run, --overwrite deletes it and starts over, "
                  f"--set run.output_dir=... writes elsewhere)", file=sys.stderr)
        return None, 2
    except TrainingDiverged as e:
        print(f"vatt {command}: {e}", file=sys.stderr)
        return None, 1
    finally:
        logger.removeHandler(handler)
