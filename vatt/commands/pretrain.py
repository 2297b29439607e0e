"""Self-supervised VATT pre-training from a YAML config (one process, or many under torchrun).

    vatt pretrain --config configs/pretrain_tiny_sample.yaml --set optim.lr=3e-4 --set run.output_dir=runs/a
    torchrun --nproc_per_node 8 -m vatt pretrain --config configs/pretrain_bbs.yaml
    vatt pretrain --config ... --resume            # continue from the latest checkpoint of run.output_dir
    vatt pretrain --config ... --overwrite         # start over in a run.output_dir that holds an earlier run

`--set section.field=value` overrides any config field; `--print-config` shows the result and exits.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--config", help="YAML file with the sections model, data, optim, loss, run, checkpoint, "
                                         "log, eval (omitted sections keep their defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a field, e.g. optim.lr=3e-4 or model.overrides.video.droptoken.keep_rate=1.0 "
                             "(repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a run.output_dir that holds an earlier run, deleting its checkpoints "
                             "and logs (without this or --resume, a non-empty output folder is refused)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from vatt.commands._config import load_or_report
    from vatt.pretrain.config import ConfigError, load_config

    config, exit_code = load_or_report("pretrain", load_config, ConfigError, args)
    if config is None:
        return exit_code

    from vatt.engine.checkpoint import OutputDirNotEmpty
    from vatt.pretrain.loop import TrainingDiverged, pretrain
    from vatt.engine.progress import ProgressBar, TqdmLoggingHandler

    main_rank = int(os.environ.get("RANK", "0")) == 0  # torchrun sets RANK; the others only report errors
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("vatt")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if main_rank else logging.ERROR)
    try:
        result = pretrain(config, resume=args.resume, overwrite=args.overwrite, callbacks=[ProgressBar()])
    except OutputDirNotEmpty as e:
        if main_rank:
            print(f"vatt pretrain: error: {e} (--resume continues that run, --overwrite deletes it and starts over, "
                  f"--set run.output_dir=... writes elsewhere)", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"vatt pretrain: {e}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
    if main_rank:
        last = result.history[-1] if result.history else {}
        print(f"done: step {result.step}, loss {last.get('loss', float('nan')):.4f}, "
              f"{result.skipped_steps} skipped steps; checkpoint {result.last_checkpoint}; "
              f"metrics {result.output_dir / 'metrics.jsonl'}")
    return 0
