"""The fine-tuning loop: `finetune(config)`, on one CPU process or many GPUs under torchrun.

One optimiser step:
  1. set the learning rate for the step (linear warm-up, then cosine to `final_lr`; a function of the step);
  2. seed dropout / DropToken from (seed, step, rank), and the step's mixup and noise draws likewise, so
     a resumed run draws what an uninterrupted one would;
  3. per micro-batch: targets (one-hot, smoothed; or multi-hot), optional audio noise and mixup, forward
     under bf16 autocast (if on), the official loss in float32, backward;
  4. the global norm of the backbone gradients (weights named `classification` excluded) is clipped to
     `grad_clip_norm`, the classifier's separately to `classifier_grad_clip_norm` (official: not at all);
  5. a step whose loss or gradient is NaN/Inf is skipped and counted (the official code zeroes NaN losses
     and applies the update); too many in a row stop the run.
Every `eval.every_steps` steps and at the end the validation set is scored with all its views (4 x 3 for
video, logits averaged before the softmax); the best model by `eval.metric` is saved as a vatt model
folder `<output_dir>/best/` (with `classes.txt` and `best.json`). Checkpoints (`<output_dir>/checkpoints/`)
are those of `vatt.engine.checkpoint`, written atomically, and `resume=True` continues from the latest.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vatt.atomic import atomic_folder, write_text
from vatt.data.sampling import MicroBatches, collate, sample_seed
from vatt.data.errors import WORKER_DEATH_ERRORS, is_worker_death, worker_died
from vatt.finetune.config import ConfigError, FinetuneConfig
from vatt.eval.classification import ClassificationResult, classification_metrics, predict
from vatt.finetune.losses import cross_entropy_on_probabilities, sigmoid_cross_entropy, smooth_labels
from vatt.engine import checkpoint as ckpt
from vatt.engine.distributed import all_reduce, barrier, init_distributed, shutdown_distributed, wrap_model
from vatt.engine.optim import set_learning_rate
from vatt.engine.progress import Callback, MetricsWriter

log = logging.getLogger("vatt.finetune")

HIGHER_IS_BETTER = {"top1": True, "top5": True, "mAP": True, "AUC": True, "d-prime": True}


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class FinetuneResult:
    output_dir: Path
    step: int
    skipped_steps: int
    classes: list[str]
    modality: str
    metric: str  # the validation metric that chose the best model
    init: str  # where the weights started from, in words
    best: dict[str, Any] | None = None  # {"step", "metric", "value", "metrics", "path"}
    final: ClassificationResult | None = None  # the last evaluation (all validation clips)
    last_checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl train records of this call
    eval_history: list[dict[str, Any]] = field(default_factory=list)


def finetune(config: FinetuneConfig, *, resume: bool = False, callbacks: Iterable[Callback] = (),
             train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
             classes: list[str] | None = None, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune a classifier as `config` says; with `resume`, continue from the latest checkpoint.

    `train_dataset` / `val_dataset` replace the data named in `config.data` (map-style datasets as
    `vatt.data.datasets.ClassificationDataset` yields: training samples `video` [T, H, W, 3] or `audio` [N]
    with `label`; validation samples with all views, `[V, ...]`). Callbacks get `on_start`, `on_step`,
    `on_log`, `on_eval`, `on_end`, and `on_eval_progress(done, total)` if they define it.
    A new run (not `resume`) refuses a `run.output_dir` that already holds files, unless `overwrite`.
    """
    config.validate()
    env = init_distributed(config.run.device)
    try:
        ckpt.prepare_output_dir(config.run.output_dir, resume=resume, overwrite=overwrite, is_main=env.is_main)
        barrier()
        run = _Run(config, env, list(callbacks) if env.is_main else [], train_dataset, val_dataset, classes,
                   resume)
        return run.train(resume)
    finally:
        shutdown_distributed(env)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.dim() == 2:  # already multi-hot / soft
        return labels.float()
    return F.one_hot(labels.long(), num_classes).float()


class _Run:
    def __init__(self, cfg: FinetuneConfig, env, callbacks: list[Callback], train_dataset, val_dataset,
                 classes: list[str] | None, resume: bool = False):
        from vatt.finetune.data import build_datasets, resolve_modality
        from vatt.finetune.optim import build_optimizer
        from vatt.finetune.weights import init_classifier
        from vatt.model.factory import build_model
        from vatt.precision import autocast_dtype

        self.cfg, self.env, self.callbacks = cfg, env, callbacks
        self.out = Path(cfg.run.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        base_config = cfg.model.build_config()
        self.modality = resolve_modality(cfg.data, base_config)
        if train_dataset is None:
            train_dataset, val_dataset, classes, multi_label = build_datasets(cfg.data, base_config, cfg.run.seed)
        else:
            classes = list(classes or getattr(train_dataset, "classes", []) or [])
            multi_label = bool(getattr(train_dataset, "multi_label", False))
            if not classes:
                raise ValueError("pass classes= (or a dataset with .classes) together with train_dataset=")
        self.classes, self.multi_label = classes, multi_label
        self.model_config = cfg.model.build_config(num_classes=len(classes))
        if self.model_config.num_classes != len(classes):
            raise ConfigError(f"model.num_classes={self.model_config.num_classes} but the data has "
                              f"{len(classes)} classes")
        self.output = self.model_config.output
        if multi_label and self.output != "sigmoid":
            raise ConfigError("multi-label data (data.label_delimiter) needs sigmoid outputs: "
                              "model.overrides.output=sigmoid")
        smoothing = cfg.loss.label_smoothing
        self.label_smoothing = (0.0 if self.modality == "audio" else 0.1) if smoothing is None else smoothing
        if self.output == "sigmoid" and self.label_smoothing:
            raise ConfigError("loss.label_smoothing applies to softmax outputs; the official sigmoid loss has none")
        self.metric = cfg.eval.metric if cfg.eval.metric != "auto" else ("mAP" if multi_label else "top1")
        if (self.metric in ("top1", "top5")) == multi_label:
            kind = "multi" if multi_label else "single"
            raise ConfigError(f"eval.metric={self.metric} does not fit {kind}-label data")

        torch.manual_seed(cfg.run.seed)
        model = build_model(self.model_config)
        if resume and ckpt.latest_checkpoint(self.ckpt_root) is not None:
            # The weights come from the checkpoint; where they first came from is recorded in it (the source
            # itself, e.g. a pruned pre-training checkpoint, may be gone).
            from vatt.finetune.weights import InitReport
            saved = ckpt.load_train_state(ckpt.latest_checkpoint(self.ckpt_root)).get("init")
            self.init = InitReport(**json.loads(saved)) if saved else InitReport(source="", kind="unknown")
        else:
            self.init = init_classifier(model, cfg.model.init_from)
        if cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model = model.to(env.device)
        self.raw_model = model
        self.model = wrap_model(model, "ddp", env)
        self.optimizer = build_optimizer(model, cfg.optim)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.backbone_params = [p for n, p in named if "classification" not in n]
        self.classifier_params = [p for n, p in named if "classification" in n]
        self.amp_dtype = autocast_dtype(cfg.run.precision, env.device)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.data = MicroBatches(train_dataset, collate, cfg.data.batch_size, env.world_size, env.rank,
                                 cfg.optim.grad_accum_steps, cfg.run.seed, cfg.data.num_workers,
                                 pin_memory=env.device.type == "cuda")
        self.step = 0
        self.skipped_steps = 0
        self.consecutive_skipped = 0
        self.best: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------
    def train(self, resume: bool) -> FinetuneResult:
        cfg = self.cfg
        if resume:
            self._resume()
        if self.env.is_main:
            write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n", what="run config")
        writer = None
        if self.env.is_main:
            writer = MetricsWriter(self.out, cfg.log.tensorboard, self.step if resume else None)
        result = FinetuneResult(self.out, self.step, self.skipped_steps, self.classes, self.modality, self.metric,
                                self.init.describe(), last_checkpoint=ckpt.latest_checkpoint(self.ckpt_root))
        log.info("weights: %s", self.init.describe())
        self._emit("on_start", self.step, cfg.optim.total_steps)
        window: list[dict[str, float]] = []
        batches = iter(self.data)
        try:
            while self.step < cfg.optim.total_steps:
                metrics = self._step([next(batches) for _ in range(cfg.optim.grad_accum_steps)])
                self.step += 1
                window.append(metrics)
                self._emit("on_step", self.step, metrics)
                last = self.step == cfg.optim.total_steps
                if self.step % cfg.log.every_steps == 0 or last:
                    record = self._log_record(window)
                    window = []
                    result.history.append(record)
                    if writer:
                        writer.write(record)
                    self._emit("on_log", self.step, record)
                every = cfg.eval.every_steps
                if self.val_dataset is not None and ((every and self.step % every == 0) or last):
                    evaluation = self.evaluate(max_clips=0 if last else cfg.eval.max_clips)
                    record = {"step": self.step, **evaluation.metrics}
                    result.eval_history.append({**record, "protocol": dataclasses.asdict(evaluation.protocol)})
                    if writer:
                        writer.write(record, "eval")  # eval.jsonl + eval/* in TensorBoard
                    self._emit("on_eval", self.step, evaluation.metrics)
                    self._maybe_save_best(evaluation)
                    if last:
                        result.final = evaluation
                every = cfg.checkpoint.every_steps
                if (every and self.step % every == 0 and not self.consecutive_skipped) or last:
                    result.last_checkpoint = self.save()
            if self.val_dataset is None and self.env.is_main:
                self._save_model(self.out / "final", {"step": self.step, "note": "no validation data"})
        except WORKER_DEATH_ERRORS as e:
            if not is_worker_death(e):  # torch raises it wherever the main process is when a worker dies
                raise
            raise worker_died(e, f"Fine-tuning stopped after step {self.step}; the last checkpoint is "
                                 f"{ckpt.latest_checkpoint(self.ckpt_root) or 'none'}: run again with --resume "
                                 "(resume=True) to continue from it.") from None
        finally:
            if writer:
                writer.close()
        result.step, result.skipped_steps, result.best = self.step, self.skipped_steps, self.best
        self._emit("on_end", result)
        return result

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    # ------------------------------------------------------------------------------------------------
    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        targets = _one_hot(labels, len(self.classes))
        if self.output == "softmax" and self.label_smoothing:
            targets = smooth_labels(targets, self.label_smoothing)
        return targets

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.output == "sigmoid":
            return sigmoid_cross_entropy(logits, targets, self.cfg.loss.label_frequency_weighting)
        return cross_entropy_on_probabilities(logits, targets)

    def _step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        from vatt.data import transforms

        cfg, env = self.cfg, self.env
        t0 = time.perf_counter()
        lr = set_learning_rate(self.optimizer, self.step, cfg.optim)
        self.model.train()
        torch.manual_seed(sample_seed(cfg.run.seed, self.step, env.rank, 1))
        rng = torch.Generator().manual_seed(sample_seed(cfg.run.seed, self.step, env.rank, 2))
        key = "audio" if self.modality == "audio" else "video"
        n = len(micro_batches)
        total_loss = torch.zeros((), device=env.device)
        correct = torch.zeros((), device=env.device)
        seen = 0
        for i, batch in enumerate(micro_batches):
            x = batch[key]
            labels = batch["label"]
            targets = self._targets(labels)
            if key == "audio" and cfg.data.audio_noise > 0:
                x = transforms.add_gaussian_noise(x, rng, cfg.data.audio_noise)
            if cfg.data.mixup:
                x, targets = transforms.mixup(x, targets, rng, cfg.data.mixup_alpha, cfg.data.mixup_alpha)
            x, targets = x.to(env.device, non_blocking=True), targets.to(env.device)
            sync = i == n - 1 or env.world_size == 1
            ctx = self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else _null()
            with ctx:
                with torch.autocast(env.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    logits = self.model(x).logits
                loss = self._loss(logits, targets)
                (loss / n).backward()
            total_loss += loss.detach() / n
            if labels.dim() == 1:
                correct += (logits.detach().argmax(-1).cpu() == labels).sum().to(env.device)
                seen += labels.shape[0]

        backbone_norm = _grad_norm(self.backbone_params, env.device)
        classifier_norm = _grad_norm(self.classifier_params, env.device)
        bad = ~(torch.isfinite(total_loss) & torch.isfinite(backbone_norm) & torch.isfinite(classifier_norm))
        bad = bool(all_reduce(bad.float(), "max").item())
        if bad:
            self.skipped_steps += 1
            self.consecutive_skipped += 1
            log.warning("step %d: loss %.4g, gradient norm %.4g: not finite, update skipped (%d in a row)",
                        self.step + 1, total_loss.item(), backbone_norm.item(), self.consecutive_skipped)
            if self.consecutive_skipped >= cfg.run.max_consecutive_bad_steps:
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(
                    f"stopped at step {self.step + 1}: {self.consecutive_skipped} consecutive steps had a NaN/Inf "
                    f"loss or gradient (run.max_consecutive_bad_steps={cfg.run.max_consecutive_bad_steps}); last "
                    f"checkpoint: {ckpt.latest_checkpoint(self.ckpt_root) or 'none'}. Try a lower optim.lr or "
                    f"run.precision=fp32.")
        else:
            self.consecutive_skipped = 0
            if cfg.optim.grad_clip_norm > 0 and self.backbone_params:
                torch.nn.utils.clip_grads_with_norm_(self.backbone_params, cfg.optim.grad_clip_norm, backbone_norm)
            if cfg.optim.classifier_grad_clip_norm > 0 and self.classifier_params:
                torch.nn.utils.clip_grads_with_norm_(self.classifier_params, cfg.optim.classifier_grad_clip_norm,
                                                     classifier_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = all_reduce(total_loss, "mean")
        seconds = time.perf_counter() - t0
        return {"loss": total_loss.item(), "lr": lr, "grad_norm": backbone_norm.item(),
                "classifier_grad_norm": classifier_norm.item(),
                "train_top1": float(all_reduce(correct, "sum").item()) / max(seen * env.world_size, 1)
                if seen else float("nan"),
                "clips_per_s": cfg.data.batch_size / seconds, "seconds": seconds, "skipped": float(bad)}

    def _log_record(self, window: list[dict[str, float]]) -> dict[str, Any]:
        good = [m for m in window if not m["skipped"]]

        def mean(key):
            vals = [m[key] for m in good if not math.isnan(m[key])]
            return sum(vals) / len(vals) if vals else float("nan")

        seconds = sum(m["seconds"] for m in window)
        return {"step": self.step, "epoch": self.data.epoch, "loss": mean("loss"), "lr": window[-1]["lr"],
                "grad_norm": mean("grad_norm"), "train_top1": mean("train_top1"),
                "clips_per_s": self.cfg.data.batch_size * len(window) / seconds, "skipped_steps": self.skipped_steps}

    # ------------------------------------------------------------------------------------------------
    def evaluate(self, max_clips: int = 0) -> ClassificationResult:
        """Score the validation set with all its views (all ranks take part)."""
        progress = None
        hooks = [getattr(cb, "on_eval_progress") for cb in self.callbacks if hasattr(cb, "on_eval_progress")]
        if hooks:
            def progress(done, total):
                for h in hooks:
                    h(done, total)
        batch = self.cfg.data.eval_batch_size or self.cfg.data.batch_size
        logits, labels = predict(self.raw_model, self.val_dataset, batch_size=batch,
                                 num_workers=self.cfg.data.num_workers, device=self.env.device,
                                 amp_dtype=self.amp_dtype, max_clips=max_clips, progress=progress)
        return classification_metrics(logits, labels, self.multi_label)

    def _maybe_save_best(self, evaluation: ClassificationResult) -> None:
        value = evaluation.metrics[self.metric]
        higher = HIGHER_IS_BETTER[self.metric]
        if self.best is not None and not (value > self.best["value"] if higher else value < self.best["value"]):
            return
        self.best = {"step": self.step, "metric": self.metric, "value": value, "metrics": dict(evaluation.metrics),
                     "protocol": dataclasses.asdict(evaluation.protocol), "path": str(self.out / "best")}
        if self.env.is_main:
            self._save_model(self.out / "best", self.best)
        barrier()

    def _save_model(self, folder: Path, info: dict[str, Any]) -> None:
        """A vatt model folder (loadable with `vatt.load`) plus classes.txt and <folder>.json-style info."""
        from vatt.checkpoint.io import save

        info_name = "best.json" if folder.name == "best" else "info.json"
        extra = {"classes.txt": "".join(f"{c}\n" for c in self.classes),
                 info_name: json.dumps({**info, "classes": len(self.classes), "init": self.init.describe()},
                                       indent=2) + "\n"}
        with atomic_folder(folder, what="model folder") as tmp:
            save(self.raw_model, tmp, config=self.model_config, extra_files=extra)

    # ------------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        folder = None
        if self.env.is_main:
            from vatt.configs import to_dict
            weights = {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}
            train_state = {"progress": {"step": self.step, "skipped_steps": self.skipped_steps,
                                        "consecutive_skipped": self.consecutive_skipped},
                           "optimizer": self.optimizer.state_dict(), "rng": ckpt.rng_state(),
                           "data": self.data.position(), "best": json.dumps(self.best),
                           "init": json.dumps(dataclasses.asdict(self.init)),
                           "config": json.dumps(self.cfg.to_dict())}
            folder = ckpt.save_checkpoint(self.ckpt_root, self.step, weights, to_dict(self.model_config),
                                          train_state, self.cfg.checkpoint.keep_last)
            log.info("step %d: checkpoint %s", self.step, folder)
        barrier()
        return folder

    def _resume(self) -> None:
        if self.env.is_main:  # checks the manifests, sets damaged checkpoints aside; the other ranks follow
            ckpt.resumable_checkpoint(self.ckpt_root)
        barrier()
        folder = ckpt.latest_checkpoint(self.ckpt_root)
        if folder is None:
            log.info("resume: no checkpoint under %s; starting from step 0", self.ckpt_root)
            return
        saved = ckpt.load_train_state(folder)
        self.raw_model.load_state_dict(ckpt.load_weights(folder, verify=False))
        self.optimizer.load_state_dict(saved["optimizer"])
        progress = saved["progress"]
        self.step, self.skipped_steps = int(progress["step"]), int(progress["skipped_steps"])
        self.consecutive_skipped = int(progress["consecutive_skipped"])
        self.best = json.loads(saved["best"])
        self.data.set_position(saved["data"])
        if self.env.world_size == 1:
            ckpt.set_rng_state(saved["rng"])
        log.info("resumed from %s at step %d", folder, self.step)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(grads)
