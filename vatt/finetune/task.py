"""Fine-tuning: `finetune(config)`, a classifier trained the official way by the training engine
(`vatt.engine.loop`).

What fine-tuning adds to the engine (the `FinetuneTask`):
  - the model: a video or audio classifier, its weights from a pre-trained model, a classifier, a run
    folder or an official checkpoint (`vatt.finetune.weights`), or a random initialisation;
  - the data: the labelled files a config names (`vatt.finetune.data`), and, per step, the targets (one-hot,
    smoothed; or multi-hot), optional audio noise and mixup drawn from (seed, step, rank);
  - the loss: the official one in float32 (cross-entropy on the softmax probabilities, or the re-weighted
    sigmoid cross-entropy);
  - clipping by parameter group: the backbone's gradients (weights named `classification` excluded) to
    `grad_clip_norm`, the classifier's separately to `classifier_grad_clip_norm` (official: not at all);
  - validation every `eval.every_steps` steps and at the end, with all the views of each clip (4 x 3 for
    video, logits averaged before the softmax); the best model by `eval.metric` is written as a vatt model
    folder `<output_dir>/best/` (with `classes.txt` and `best.json`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vatt.atomic import atomic_folder, write_text
from vatt.checkpoint.io import load, save
from vatt.data import transforms
from vatt.data.sampling import sample_seed
from vatt.distributed import DistEnv, barrier
from vatt.engine import checkpoint as ckpt
from vatt.engine.loop import GradGroup, Task, TrainingDiverged, TrainResult, train
from vatt.engine.progress import Callback
from vatt.eval.classification import ClassificationResult, classification_metrics, evaluate_classifier, predict
from vatt.finetune.config import ConfigError, FinetuneConfig
from vatt.finetune.data import build_datasets, resolve_modality
from vatt.finetune.weights import InitReport, init_classifier
from vatt.losses import cross_entropy_on_probabilities, sigmoid_cross_entropy, smooth_labels
from vatt.model.factory import build_model
from vatt.precision import autocast_dtype

__all__ = ["finetune", "evaluate_folder", "FinetuneTask", "FinetuneResult", "TrainingDiverged"]

log = logging.getLogger("vatt.finetune")

HIGHER_IS_BETTER = {"top1": True, "top5": True, "mAP": True, "AUC": True, "d-prime": True}


@dataclass
class FinetuneResult(TrainResult):
    classes: list[str] = dataclasses.field(default_factory=list)
    modality: str = ""
    metric: str = ""  # the validation metric that chose the best model
    init: str = ""  # where the weights started from, in words
    best: dict[str, Any] | None = None  # {"step", "metric", "value", "metrics", "path"}
    final: ClassificationResult | None = None  # the last evaluation (all validation clips)


def finetune(config: FinetuneConfig, *, resume: bool = False, callbacks: Iterable[Callback] = (),
             train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
             classes: list[str] | None = None, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune a classifier as `config` says; with `resume`, continue from the latest checkpoint.

    `train_dataset` / `val_dataset` replace the data named in `config.data` (map-style datasets as
    `vatt.data.classification.ClassificationDataset` yields: training samples `video` [T, H, W, 3] or `audio` [N]
    with `label`; validation samples with all views, `[V, ...]`). Callbacks get `on_start`, `on_step`,
    `on_log`, `on_eval`, `on_end`, and `on_eval_progress(done, total)` if they define it.
    A new run (not `resume`) refuses a `run.output_dir` that already holds files, unless `overwrite`.
    """
    task = FinetuneTask(config, train_dataset, val_dataset, classes, resume)
    return train(config, task, resume=resume, overwrite=overwrite, callbacks=callbacks)


class FinetuneTask(Task):
    name = "Fine-tuning"
    logged = ("loss", "train_top1")

    def __init__(self, cfg: FinetuneConfig, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None,
                 classes: list[str] | None = None, resume: bool = False):
        self.cfg, self.resuming = cfg, resume
        self.out = Path(cfg.run.output_dir)
        self.train_dataset, self.val_dataset, self.classes = train_dataset, val_dataset, classes
        self.best: dict[str, Any] | None = None
        self.final: ClassificationResult | None = None
        self.rng = torch.Generator()

    def prepare(self, env: DistEnv) -> Dataset:
        cfg = self.cfg
        base_config = cfg.model.build_config()
        self.modality = resolve_modality(cfg.data, base_config)
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset, self.classes, self.multi_label = build_datasets(
                cfg.data, base_config, cfg.run.seed)
        else:
            self.classes = list(self.classes or getattr(self.train_dataset, "classes", []) or [])
            self.multi_label = bool(getattr(self.train_dataset, "multi_label", False))
            if not self.classes:
                raise ValueError("pass classes= (or a dataset with .classes) together with train_dataset=")
        self.model_config = cfg.model.build_config(num_classes=len(self.classes))
        if self.model_config.num_classes != len(self.classes):
            raise ConfigError(f"model.num_classes={self.model_config.num_classes} but the data has "
                              f"{len(self.classes)} classes")
        self.output = self.model_config.output
        if self.multi_label and self.output != "sigmoid":
            raise ConfigError("multi-label data (data.label_delimiter) needs sigmoid outputs: "
                              "model.overrides.output=sigmoid")
        smoothing = cfg.loss.label_smoothing
        self.label_smoothing = (0.0 if self.modality == "audio" else 0.1) if smoothing is None else smoothing
        if self.output == "sigmoid" and self.label_smoothing:
            raise ConfigError("loss.label_smoothing applies to softmax outputs; the official sigmoid loss has none")
        self.metric = cfg.eval.metric if cfg.eval.metric != "auto" else ("mAP" if self.multi_label else "top1")
        if (self.metric in ("top1", "top5")) == self.multi_label:
            kind = "multi" if self.multi_label else "single"
            raise ConfigError(f"eval.metric={self.metric} does not fit {kind}-label data")
        if env.is_main:
            write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n", what="run config")
        return self.train_dataset

    def build_model(self, device: torch.device) -> nn.Module:
        model = build_model(self.model_config)
        latest = ckpt.latest_checkpoint(self.out / "checkpoints") if self.resuming else None
        if latest is not None:
            # The weights come from the checkpoint; where they first came from is recorded in it (the source
            # itself, e.g. a pruned pre-training checkpoint, may be gone).
            saved = ckpt.load_train_state(latest).get("init")
            self.init = InitReport(**json.loads(saved)) if saved else InitReport(source="", kind="unknown")
        else:
            self.init = init_classifier(model, self.cfg.model.init_from)
        if self.cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        log.info("weights: %s", self.init.describe())
        return model.to(device)

    def setup(self) -> None:
        named = [(n, p) for n, p in self.trainer.raw_model.named_parameters() if p.requires_grad]
        self.backbone_params = [p for n, p in named if "classification" not in n]
        self.classifier_params = [p for n, p in named if "classification" in n]

    def grad_groups(self) -> list[GradGroup]:
        optim = self.cfg.optim
        return [GradGroup("grad_norm", self.backbone_params, optim.grad_clip_norm),
                GradGroup("classifier_grad_norm", self.classifier_params, optim.classifier_grad_clip_norm)]

    # ------------------------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        # The step's mixup and noise draws, as reproducible as the model's (stream 2 of the step's seeds).
        self.rng = torch.Generator().manual_seed(sample_seed(self.cfg.run.seed, step, self.trainer.env.rank, 2))

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot (smoothed, for softmax outputs) or the data's multi-hot labels, as float32 [B, C]."""
        if labels.dim() == 2:  # already multi-hot / soft
            targets = labels.float()
        else:
            targets = F.one_hot(labels.long(), len(self.classes)).float()
        if self.output == "softmax" and self.label_smoothing:
            targets = smooth_labels(targets, self.label_smoothing)
        return targets

    def loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, trainer = self.cfg, self.trainer
        device = trainer.env.device
        key = "audio" if self.modality == "audio" else "video"
        x, labels = batch[key], batch["label"]
        targets = self.targets(labels)
        if key == "audio" and cfg.data.audio_noise > 0:
            x = transforms.add_gaussian_noise(x, self.rng, cfg.data.audio_noise)
        if cfg.data.mixup:
            x, targets = transforms.mixup(x, targets, self.rng, cfg.data.mixup_alpha, cfg.data.mixup_alpha)
        x, targets = x.to(device, non_blocking=True), targets.to(device)
        with trainer.autocast():
            logits = trainer.model(x).logits
        if self.output == "sigmoid":
            loss = sigmoid_cross_entropy(logits, targets, cfg.loss.label_frequency_weighting)
        else:
            loss = cross_entropy_on_probabilities(logits, targets)
        if labels.dim() == 1:
            top1 = (logits.detach().argmax(-1).cpu() == labels).float().mean().to(device)
        else:  # multi-label: no top-1
            top1 = torch.full((), float("nan"), device=device)
        return {"loss": loss, "train_top1": top1}

    # ------------------------------------------------------------------------------------------------
    def evaluate(self, step: int, last: bool) -> tuple[dict[str, float], dict[str, Any]] | None:
        every = self.cfg.eval.every_steps
        if self.val_dataset is None or not ((every and step % every == 0) or last):
            return None
        evaluation = self.validate(max_clips=0 if last else self.cfg.eval.max_clips)
        self._maybe_save_best(evaluation, step)
        if last:
            self.final = evaluation
        return dict(evaluation.metrics), {"protocol": dataclasses.asdict(evaluation.protocol)}

    def validate(self, max_clips: int = 0) -> ClassificationResult:
        """Score the validation set with all its views (all ranks take part)."""
        trainer = self.trainer
        batch = self.cfg.data.eval_batch_size or self.cfg.data.batch_size
        logits, labels = predict(trainer.raw_model, self.val_dataset, batch_size=batch,
                                 num_workers=self.cfg.data.num_workers, device=trainer.env.device,
                                 amp_dtype=trainer.amp_dtype, max_clips=max_clips,
                                 progress=lambda done, total: trainer.emit("on_eval_progress", done, total))
        return classification_metrics(logits, labels, self.multi_label)

    def _maybe_save_best(self, evaluation: ClassificationResult, step: int) -> None:
        value = evaluation.metrics[self.metric]
        higher = HIGHER_IS_BETTER[self.metric]
        if self.best is not None and not (value > self.best["value"] if higher else value < self.best["value"]):
            return
        self.best = {"step": step, "metric": self.metric, "value": value, "metrics": dict(evaluation.metrics),
                     "protocol": dataclasses.asdict(evaluation.protocol), "path": str(self.out / "best")}
        if self.trainer.env.is_main:
            self._save_model(self.out / "best", self.best)
        barrier()

    def _save_model(self, folder: Path, info: dict[str, Any]) -> None:
        """A vatt model folder (loadable with `vatt.load`) plus classes.txt and <folder>.json-style info."""
        info_name = "best.json" if folder.name == "best" else "info.json"
        extra = {"classes.txt": "".join(f"{c}\n" for c in self.classes),
                 info_name: json.dumps({**info, "classes": len(self.classes), "init": self.init.describe()},
                                       indent=2) + "\n"}
        with atomic_folder(folder, what="model folder") as tmp:
            save(self.trainer.raw_model, tmp, config=self.model_config, extra_files=extra)

    # ------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"best": json.dumps(self.best), "init": json.dumps(dataclasses.asdict(self.init))}

    def load_state(self, saved: dict[str, Any]) -> None:
        self.best = json.loads(saved["best"])

    def finish(self, result: TrainResult) -> FinetuneResult:
        if self.val_dataset is None and self.trainer.env.is_main:
            self._save_model(self.out / "final", {"step": result.step, "note": "no validation data"})
        return FinetuneResult(**vars(result), classes=self.classes, modality=self.modality, metric=self.metric,
                              init=self.init.describe(), best=self.best, final=self.final)


def evaluate_folder(config: FinetuneConfig, model_dir: str | Path,
                    progress: Callable[[int, int], None] | None = None) -> ClassificationResult:
    """Score the classifier in `model_dir` (a vatt model folder) on the validation data `config` names."""
    model = load(model_dir)
    _, val, classes, multi_label = build_datasets(config.data, model.config, config.run.seed)
    if val is None:
        raise ValueError("the config names no validation data (data.val / data.val_where)")
    if model.config.num_classes != len(classes):
        raise ValueError(f"{model_dir} has {model.config.num_classes} classes, the data {len(classes)}")
    device = torch.device("cuda" if config.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    return evaluate_classifier(model.to(device), val, multi_label=multi_label, device=device,
                               batch_size=config.data.eval_batch_size or config.data.batch_size,
                               num_workers=config.data.num_workers,
                               amp_dtype=autocast_dtype(config.run.precision, device), progress=progress)
