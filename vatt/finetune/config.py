"""The fine-tuning config: one dataclass per concern, read from YAML with `--set a.b=c` overrides.

    model:      a classifier preset (+ overrides), where its weights start from, the number of classes
    data:       the labelled files (CSV, class folders, UCF101 / HMDB51 split files), clip sizes, views
    optim:      SGD momentum 0.9, lr 0.005, 2500 warm-up steps, cosine to 0, backbone clipping 0.75
    loss:       label smoothing, multi-label re-weighting
    run:        output folder, seed, device, precision, divergence guard
    checkpoint: how often, how many kept (the best one by the validation metric is kept apart)
    log:        metrics.jsonl / TensorBoard
    eval:       how often the validation set is scored, and by which metric the best model is chosen

Defaults are the official fine-tuning recipe (`configs/experiment.py:Finetune`, `configs/dataset.py:Finetune`,
spec section 7). The YAML reader and the `--set` parsing are those of `vatt.pretrain.config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vatt import configs as model_configs
from vatt.pretrain.config import ConfigError, _deep_merge, _field_type, _Loader, _message, _nest, parse_value

CLASSIFIER_KINDS = ("video_classifier", "audio_classifier")


@dataclass
class ModelConfig:
    preset: str = "vit_base_classifier"
    # Fields of the preset's ClassifierConfig to change: {"classifier_dropout": 0.2, "output": "sigmoid"}.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Where the weights start: "" (random initialisation), a vatt model folder (a tx_fac / ut_fac pre-trained
    # model: its video or audio backbone; a classifier: all of it, the head only if the class count matches),
    # a pre-training run folder (its latest checkpoint), or an official TensorFlow checkpoint prefix.
    init_from: str = ""
    num_classes: int = 0  # 0: the number of classes in the data
    grad_checkpointing: bool = False

    def build_config(self, num_classes: int | None = None) -> Any:
        """The ClassifierConfig: the preset, the overrides, and `num_classes` (from the data) if not set."""
        try:
            preset = model_configs.get_preset(self.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {_message(e)}") from None
        if getattr(preset, "kind", None) not in CLASSIFIER_KINDS:
            names = sorted(n for n in model_configs.PRESETS if n.endswith("_classifier"))
            raise ConfigError(f"model.preset: {self.preset!r} is not a classifier; fine-tuning needs one of "
                              f"{', '.join(names)}")
        if not isinstance(self.overrides, dict):
            raise ConfigError(f"model.overrides: expected a mapping of classifier-config fields, "
                              f"got {self.overrides!r}")
        merged = _deep_merge(model_configs.to_dict(preset), _nest(self.overrides, "model.overrides"))
        if self.num_classes:
            merged["num_classes"] = self.num_classes
        elif num_classes:
            merged["num_classes"] = num_classes
        try:
            return model_configs.config_from_dict(merged)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {_message(e)}") from None


@dataclass
class DataConfig:
    # "auto": the classifier's modality (video for a ViT, audio for a WaT); "image" tiles images over time.
    modality: Literal["auto", "video", "audio", "image"] = "auto"
    # csv: `train` / `val` are CSV files (one row per file; `val` defaults to `train`, told apart by the
    #      where filters, e.g. a split or fold column);
    # folder: `train` / `val` are folders with one sub-folder per class;
    # ucf101: `train` / `val` are trainlist0k.txt / testlist0k.txt, videos under `root`;
    # hmdb51: `train` is the folder of *_test_split<k>.txt files (k = hmdb_split), videos under `root`.
    format: Literal["csv", "folder", "ucf101", "hmdb51"] = "csv"
    train: str = ""
    val: str = ""
    root: str = ""  # csv: where relative paths start (default: the CSV's folder); ucf101/hmdb51: the videos
    path_column: str = "path"
    label_column: str = "label"
    label_delimiter: str = ""  # set (e.g. ",") for multi-label rows: AudioSet style, sigmoid outputs
    classes: str = ""  # a file with one class name per line (default: the sorted labels of the data)
    train_where: dict[str, Any] = field(default_factory=dict)  # e.g. {split: train}, or ESC-50 {fold: [1, 2, 3, 4]}
    train_where_not: dict[str, Any] = field(default_factory=dict)
    val_where: dict[str, Any] = field(default_factory=dict)
    val_where_not: dict[str, Any] = field(default_factory=dict)
    hmdb_split: int = 1
    batch_size: int = 32  # clips per optimiser step over all ranks and accumulation steps
    eval_batch_size: int = 0  # clips (each with all its views) per evaluation forward pass; 0 = batch_size
    num_workers: int = 2
    # Clip sizes; 0 takes what the model's positional tables were made for.
    num_frames: int = 0
    frame_size: int = 0
    fps: float = 12.5  # official: 32 frames at stride 2 of 25 fps sources
    audio_samples: int = 0
    sample_rate: int = 0
    # Keep every n-th decoded sample: official AudioSet fine-tuning takes 153,600 samples at stride 2 of
    # 48 kHz (sample_rate 48000, audio_stride 2). sample_rate 24000 with stride 1 is the low-pass-filtered
    # alternative (a named deviation).
    audio_stride: int = 1
    image_frames: int = 0  # images are tiled over this many frames; 0 = the temporal patch size (official 4)
    # Test views: `num_windows_test` linearly spaced windows, x3 spatial crops with `multi_crop` (video);
    # logits are averaged over all views before the softmax / sigmoid.
    num_windows_test: int = 4
    multi_crop: bool = True
    flip_prob: float = 0.5
    audio_noise: float = 0.0  # Gaussian noise sigma as a fraction of max|x| (official fine-tuning: 0)
    mixup: bool = False  # official: on for AudioSet only
    mixup_alpha: float = 5.0  # lambda ~ Beta(alpha, alpha)


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.005
    final_lr: float = 0.0
    warmup_steps: int = 2500
    total_steps: int = 100_000
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    # Global-norm clipping of the backbone gradients only (weights whose name contains "classification"
    # are excluded), as the official `gradient_clip_norm`; 0 = off.
    grad_clip_norm: float = 0.75
    classifier_grad_clip_norm: float = 0.0  # official `gradient_clip_norm_cls`; 0 = off
    grad_accum_steps: int = 1


@dataclass
class LossConfig:
    # Softmax outputs: cross-entropy on the softmax probabilities against smoothed one-hot labels.
    # None: 0.1 for video and images (official), 0 for audio (the official audio loader does not smooth).
    label_smoothing: float | None = None
    # Sigmoid outputs: each sample's loss re-weighted by sum_c y_c / count_c(batch) / sum_c y_c (official).
    label_frequency_weighting: bool = True


@dataclass
class RunConfig:
    output_dir: str = "runs/finetune"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "fp32" as the official models were trained; "bf16" / "auto" (bf16 where fast) are named options.
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    max_consecutive_bad_steps: int = 20


@dataclass
class CheckpointConfig:
    every_steps: int = 5000  # official save frequency; also written at the end; 0 = only at the end
    keep_last: int = 2


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True


@dataclass
class EvalConfig:
    every_steps: int = 5000  # score the validation set (and keep the best model) every N steps; 0 = only at the end
    metric: Literal["auto", "top1", "top5", "mAP", "AUC", "d-prime"] = "auto"  # auto: top1, or mAP if multi-label
    max_clips: int = 0  # periodic evaluations use the first N validation clips; 0 = all. The final one uses all.


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Check values that types alone cannot; raise ConfigError naming the field."""
        self.model.build_config(num_classes=self.model.num_classes or 2)
        positive = {"data.batch_size": self.data.batch_size, "optim.total_steps": self.optim.total_steps,
                    "optim.grad_accum_steps": self.optim.grad_accum_steps, "data.num_windows_test":
                    self.data.num_windows_test, "checkpoint.keep_last": self.checkpoint.keep_last,
                    "log.every_steps": self.log.every_steps, "data.fps": self.data.fps,
                    "run.max_consecutive_bad_steps": self.run.max_consecutive_bad_steps,
                    "data.mixup_alpha": self.data.mixup_alpha, "data.audio_stride": self.data.audio_stride}
        non_negative = {name: getattr(getattr(self, name.split(".")[0]), name.split(".")[1]) for name in (
            "model.num_classes", "data.eval_batch_size", "data.num_workers", "data.num_frames", "data.frame_size",
            "data.audio_samples", "data.sample_rate", "data.image_frames", "data.audio_noise", "optim.lr",
            "optim.final_lr", "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm",
            "optim.classifier_grad_clip_norm", "optim.momentum", "checkpoint.every_steps", "eval.every_steps",
            "eval.max_clips")}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.optim.warmup_steps and self.optim.warmup_steps >= self.optim.total_steps:
            raise ConfigError(f"optim.warmup_steps={self.optim.warmup_steps} is not below optim.total_steps="
                              f"{self.optim.total_steps}: the run would end inside the warm-up, never reaching the "
                              f"peak rate; lower optim.warmup_steps below optim.total_steps (0 = no warm-up)")
        if not 0.0 <= self.data.flip_prob <= 1.0:
            raise ConfigError(f"data.flip_prob must be in [0, 1], got {self.data.flip_prob}")
        if self.loss.label_smoothing is not None and not 0.0 <= self.loss.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.loss.label_smoothing}")
        if self.optim.weight_decay > 0 and self.optim.optimizer == "adam":
            raise ConfigError("optim.weight_decay needs optim.optimizer=sgd or adamw")
        if self.data.format == "hmdb51" and not self.data.root:
            raise ConfigError("data.format=hmdb51 needs data.root (the videos) and data.train (the split files)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> FinetuneConfig:
    """The config of a YAML file (or the defaults) with `key=value` overrides applied, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.load(Path(path).read_text(), Loader=_Loader) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, ...) at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.01), got {item!r}")
        key = key.strip()
        typed = value if _field_type(FinetuneConfig, key.split(".")) is str else parse_value(value)
        data = _deep_merge(data, _nest({key: typed}, ""))
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> FinetuneConfig:
    try:
        cfg = model_configs.dataclass_from_dict(FinetuneConfig, data)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(_message(e)) from None
    cfg.validate()
    return cfg
