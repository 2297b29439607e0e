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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("--config", help="YAML file with the sections model, data, optim, loss, run, checkpoint, log, "
                                         "eval (omitted sections keep the official defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a field, e.g. optim.lr=0.01 or model.init_from=runs/pretrain (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a run.output_dir that holds an earlier run, deleting its checkpoints "
                             "and logs (without this or --resume, a non-empty output folder is refused)")
    parser.add_argument("--evaluate", metavar="MODEL_DIR",
                        help="do not train: score this classifier folder on the config's validation data")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


class _Bars:
    """Training bar (vatt.engine.progress.ProgressBar) plus a bar per evaluation."""

    def __init__(self):
        from vatt.engine.progress import ProgressBar
        self.train = ProgressBar(desc="fine-tuning")
        self.eval_bar = None

    def on_start(self, start_step, total_steps):
        self.train.on_start(start_step, total_steps)

    def on_step(self, step, metrics):
        self.train.on_step(step, metrics)

    def on_eval_progress(self, done, total):
        from vatt.commands.embed import Bar
        if self.eval_bar is None:
            self.eval_bar = Bar("validation", total, unit="clip")
        self.eval_bar(min(done, total), total)

    def on_eval(self, step, metrics):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None
        import logging
        logging.getLogger("vatt.finetune").info(
            "step %d: validation %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                      if isinstance(v, float)))

    def on_log(self, step, record):
        pass

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
    import time
    from pathlib import Path

    import torch

    from vatt.checkpoint.io import load
    from vatt.commands.embed import table, write_json
    from vatt.finetune.data import build_datasets
    from vatt.eval.classification import classification_metrics, predict
    from vatt.precision import autocast_dtype

    t0 = time.perf_counter()
    model = load(model_dir)
    _, val, classes, multi_label = build_datasets(config.data, model.config, config.run.seed)
    if val is None:
        raise ValueError("the config names no validation data (data.val / data.val_where)")
    if model.config.num_classes != len(classes):
        raise ValueError(f"{model_dir} has {model.config.num_classes} classes, the data {len(classes)}")
    device = torch.device("cuda" if config.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    model.to(device)
    from vatt.commands.embed import Bar
    bar = Bar("validation", len(val), unit="clip")
    try:
        logits, labels = predict(model, val, batch_size=config.data.eval_batch_size or config.data.batch_size,
                                 num_workers=config.data.num_workers, device=device,
                                 amp_dtype=autocast_dtype(config.run.precision, device), progress=bar)
    finally:
        bar.close()
    result = classification_metrics(logits, labels, multi_label)
    out = Path(config.run.output_dir) / "evaluation.json"
    write_json(out, {"command": "finetune --evaluate", "model": model_dir, **result.as_dict(),
                     "seconds": round(time.perf_counter() - t0, 3)})
    print(f"{model_dir} on the validation data: {result.protocol.describe()}")
    print(table(["metric", "value"], _metric_rows(result.metrics)))
    print(f"wrote {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from vatt.commands._config import load_or_report
    from vatt.finetune.config import ConfigError, load_config

    config, exit_code = load_or_report("finetune", load_config, ConfigError, args)
    if config is None:
        return exit_code
    if args.evaluate:
        return _evaluate_only(config, args.evaluate)

    from vatt.commands.embed import table, write_json
    from vatt.finetune.loop import TrainingDiverged, finetune
    from vatt.engine.checkpoint import OutputDirNotEmpty
    from vatt.engine.progress import TqdmLoggingHandler

    main_rank = int(os.environ.get("RANK", "0")) == 0
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("vatt")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if main_rank else logging.ERROR)
    try:
        result = finetune(config, resume=args.resume, overwrite=args.overwrite, callbacks=[_Bars()])
    except OutputDirNotEmpty as e:
        if main_rank:
            print(f"vatt finetune: error: {e} (--resume continues that run, --overwrite deletes it and starts over, "
                  f"--set run.output_dir=... writes elsewhere)", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"vatt finetune: {e}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
    if not main_rank:
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
    path = write_json(result.output_dir / "results.json", record)
    print(f"fine-tuned {result.modality} classifier, {len(result.classes)} classes, {result.step} steps "
          f"({result.skipped_steps} skipped); weights: {result.init}")
    if result.final is not None:
        print(f"final validation: {result.final.protocol.describe()}")
        rows = _metric_rows(result.final.metrics)
        if result.best is not None:
            best = {k: v for k, v in result.best["metrics"].items()}
            rows = [r + [_metric_rows({r[0]: best[r[0]]})[0][1] if r[0] in best else ""] for r in rows]
            print(table(["metric", "final", f"best (step {result.best['step']}, by {result.metric})"], rows))
        else:
            print(table(["metric", "final"], rows))
    if result.best is not None:
        print(f"best model: {result.best['path']}")
    print(f"wrote {path}; training log {result.output_dir / 'metrics.jsonl'}")
    return 0
