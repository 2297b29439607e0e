"""Self-supervised VATT pre-training from a YAML config (one process, or many under torchrun).

    vatt pretrain --config configs/pretrain_tiny_sample.yaml --set optim.lr=3e-4 --set run.output_dir=runs/a
    torchrun --nproc_per_node 8 -m vatt pretrain --config configs/pretrain_bbs.yaml
    vatt pretrain --config ... --resume            # continue from the latest checkpoint of run.output_dir
    vatt pretrain --config ... --overwrite         # start over in a run.output_dir that holds an earlier run

`--set section.field=value` overrides any config field; `--print-config` shows the result and exits.
"""
from __future__ import annotations

import argparse

from vatt.commands.experiment import add_experiment_arguments, is_main_rank, load_or_report, run_training
from vatt.engine.progress import ProgressBar
from vatt.pretrain.config import load_config
from vatt.pretrain.task import pretrain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_experiment_arguments(parser, __doc__, "optim.lr=3e-4 or model.overrides.video.droptoken.keep_rate=1.0")


def run(args: argparse.Namespace) -> int:
    config, exit_code = load_or_report("pretrain", load_config, args)
    if config is None:
        return exit_code
    result, exit_code = run_training("pretrain", lambda: pretrain(
        config, resume=args.resume, overwrite=args.overwrite, callbacks=[ProgressBar()]))
    if result is None:
        return exit_code
    if is_main_rank():
        last = result.history[-1] if result.history else {}
        print(f"done: step {result.step}, loss {last.get('loss', float('nan')):.4f}, "
              f"{result.skipped_steps} skipped steps; checkpoint {result.last_checkpoint}; "
              f"metrics {result.output_dir / 'metrics.jsonl'}")
    return 0
