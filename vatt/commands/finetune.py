"""Fine-tune a video, audio or image classifier from a YAML config (official recipe by default).

    vatt finetune --config configs/finetune_fsdd_tiny.yaml
    vatt finetune --config configs/finetune_k400_vit_base.yaml --set model.init_from=converted/bbs
    vatt finetune --config ... --resume                      # continue from the latest checkpoint
    vatt finetune --config ... --overwrite                   # start over in an output folder of an earlier run
    vatt finetune --config ... --evaluate runs/k400/best     # only score a classifier on the validation data
    torchrun --nproc_per_node 8 -m vatt finetune --config ...

The best model by the validation metric is written to <run.output_dir>/best/ (a vatt model folder with
classes.txt); results.json holds the final and best metrics with their protocol (views, aggregation).
`--set section.field=value` overrides any config field; `--print-config` shows the result and exits.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from vatt.atomic import write_json
from vatt.commands.arguments import table
from vatt.commands.experiment import add_experiment_arguments, is_main_rank, load_or_report, run_training
from vatt.engine.progress import ConsoleProgress, ProgressBar
from vatt.finetune.config import load_config
from vatt.finetune.task import evaluate_folder, finetune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_experiment_arguments(parser, __doc__, "optim.lr=0.01 or model.init_from=runs/pretrain")
    parser.add_argument("--evaluate", metavar="MODEL_DIR",
                        help="do not train: score this classifier folder on the config's validation data")


class _Bars:
    """Training bar (vatt.engine.progress.ProgressBar) plus a bar per evaluation."""

    def __init__(self):
        self.train = ProgressBar(desc="fine-tuning")
        self.eval_bar = None

    def on_start(self, start_step, total_steps):
        self.train.on_start(start_step, total_steps)

    def on_step(self, step, metrics):
        self.train.on_step(step, metrics)

    def on_eval_progress(self, done, total):
        if self.eval_bar is None:
            self.eval_bar = ConsoleProgress("validation", total, "clip", leave=False)
        self.eval_bar(min(done, total), total)

    def on_eval(self, step, metrics):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None
        logging.getLogger("vatt.finetune").info(
            "step %d: validation %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                      if isinstance(v, float)))

    def on_end(self, result):
        self.train.on_end(result)


def _metric_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for k, v in metrics.items():
        if isinstance(v, float):
            rows.append([k, f"{100 * v:.2f} %" if k in ("top1", "top5", "mAP", "AUC") else f"{v:.4f}"])
        else:
            rows.append([k, str(v)])
    return rows


def _evaluate_only(config, model_dir: str) -> int:
    t0 = time.perf_counter()
    bar = None

    def progress(done, total):
        nonlocal bar
        bar = bar or ConsoleProgress("validation", total, "clip", leave=False)
        bar(min(done, total), total)

    try:
        result = evaluate_folder(config, model_dir, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    out = Path(config.run.output_dir) / "evaluation.json"
    write_json(out, {"command": "finetune --evaluate", "model": model_dir, **result.as_dict(),
                     "seconds": round(time.perf_counter() - t0, 3)}, what="evaluation", strict=True)
    print(f"{model_dir} on the validation data: {result.protocol.describe()}")
    print(table(["metric", "value"], _metric_rows(result.metrics)))
    print(f"wrote {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    config, exit_code = load_or_report("finetune", load_config, args)
    if config is None:
        return exit_code
    if args.evaluate:
        return _evaluate_only(config, args.evaluate)
    result, exit_code = run_training("finetune", lambda: finetune(
        config, resume=args.resume, overwrite=args.overwrite, callbacks=[_Bars()]))
    if result is None:
        return exit_code
    if not is_main_rank():
        return 0
    last = result.history[-1] if result.history else {}
    record = {
        "command": "finetune", "output_dir": str(result.output_dir), "steps": result.step,
        "skipped_steps": result.skipped_steps, "modality": result.modality, "num_classes": len(result.classes),
        "init": result.init, "validation_metric": result.metric,
        "final": result.final.as_dict() if result.final is not None else None,
        "best": result.best, "last_train_record": last,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "config": config.to_dict(),
    }
    path = write_json(result.output_dir / "results.json", record, what="results", strict=True)
    print(f"fine-tuned {result.modality} classifier, {len(result.classes)} classes, {result.step} steps "
          f"({result.skipped_steps} skipped); weights: {result.init}")
    if result.final is not None:
        print(f"final validation: {result.final.protocol.describe()}")
        rows = _metric_rows(result.final.metrics)
        if result.best is not None:
            best = result.best["metrics"]
            rows = [r + [_metric_rows({r[0]: best[r[0]]})[0][1] if r[0] in best else ""] for r in rows]
            print(table(["metric", "final", f"best (step {result.best['step']}, by {result.metric})"], rows))
        else:
            print(table(["metric", "final"], rows))
    if result.best is not None:
        print(f"best model: {result.best['path']}")
    print(f"wrote {path}; training log {result.output_dir / 'metrics.jsonl'}")
    return 0
