"""The fine-tuning config: the shared sections of `vatt.engine.config` with fine-tuning's data, loss and
validation, and the official recipe's defaults.

    model:      a classifier preset (+ overrides), where its weights start from, the number of classes
    data:       the labelled files (CSV, class folders, UCF101 / HMDB51 split files), clip sizes, views
    optim:      Keras SGD momentum 0.9, lr 0.005, 2500 warm-up steps, cosine to 0, backbone clipping 0.75
    loss:       label smoothing, multi-label re-weighting
    run:        output folder, seed, device, precision, parallelism, divergence guard
    checkpoint: how often, how many kept (the best one by the validation metric is kept apart)
    log:        metrics.jsonl / TensorBoard
    eval:       how often the validation set is scored, and by which metric the best model is chosen

Defaults are the official fine-tuning recipe (`configs/experiment.py:Finetune`, `configs/dataset.py:Finetune`,
spec section 7).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from vatt.engine import config as core
from vatt.engine.config import (CheckpointConfig, ConfigError, ExperimentConfig, LogConfig, ModelSection,
                                OptimConfig, RunConfig, check_ranges)

__all__ = ["FinetuneConfig", "ModelConfig", "DataConfig", "LossConfig", "EvalConfig", "ConfigError", "load_config",
           "config_from_dict"]


@dataclass
class ModelConfig(ModelSection):
    KINDS: ClassVar[tuple[str, ...]] = ("video_classifier", "audio_classifier")
    preset: str = "vit_base_classifier"
    # Fields of the preset's ClassifierConfig to change: {"classifier_dropout": 0.2, "output": "sigmoid"}.
    # Where the weights start: "" (random initialisation), a vatt model folder (a tx_fac / ut_fac pre-trained
    # model: its video or audio backbone; a classifier: all of it, the head only if the class count matches),
    # a pre-training run folder (its latest checkpoint), or an official TensorFlow checkpoint prefix.
    init_from: str = ""
    num_classes: int = 0  # 0: the number of classes in the data

    def build_config(self, num_classes: int | None = None) -> Any:
        """The ClassifierConfig: the preset, the overrides, and `num_classes` (from the data) if not set."""
        classes = self.num_classes or num_classes
        return super().build_config(**({"num_classes": classes} if classes else {}))


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
class LossConfig:
    # Softmax outputs: cross-entropy on the softmax probabilities against smoothed one-hot labels.
    # None: 0.1 for video and images (official), 0 for audio (the official audio loader does not smooth).
    label_smoothing: float | None = None
    # Sigmoid outputs: each sample's loss re-weighted by sum_c y_c / count_c(batch) / sum_c y_c (official).
    label_frequency_weighting: bool = True



@dataclass
class EvalConfig:
    every_steps: int = 5000  # score the validation set (and keep the best model) every N steps; 0 = only at the end
    metric: Literal["auto", "top1", "top5", "mAP", "AUC", "d-prime"] = "auto"  # auto: top1, or mAP if multi-label
    max_clips: int = 0  # periodic evaluations use the first N validation clips; 0 = all. The final one uses all.



@dataclass
class FinetuneOptimConfig(OptimConfig):
    """The official recipe: Keras SGD with momentum 0.9, lr 0.005 after 2500 warm-up steps, cosine to 0."""

    optimizer: Literal["adam", "torch_adam", "adamw", "sgd"] = "sgd"
    lr: float = 0.005
    warmup_steps: int = 2500
    total_steps: int = 100_000
    # Global-norm clipping of the backbone gradients only (weights whose name contains "classification" are
    # excluded), as the official `gradient_clip_norm`; 0 = off.
    grad_clip_norm: float = 0.75
    classifier_grad_clip_norm: float = 0.0  # official `gradient_clip_norm_cls`; 0 = off


@dataclass
class FinetuneConfig(ExperimentConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/finetune"))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every_steps=5000, keep_last=2))
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Check values that types alone cannot; raise ConfigError naming the field."""
        self.model.build_config(num_classes=self.model.num_classes or 2)
        super().validate()
        check_ranges(self, positive=("data.num_windows_test", "data.fps", "data.mixup_alpha", "data.audio_stride"),
                     non_negative=("model.num_classes", "data.eval_batch_size", "data.num_frames", "data.frame_size",
                                   "data.audio_samples", "data.sample_rate", "data.image_frames", "data.audio_noise",
                                   "optim.classifier_grad_clip_norm", "eval.every_steps", "eval.max_clips"),
                     probability=("data.flip_prob",))
        if self.loss.label_smoothing is not None and not 0.0 <= self.loss.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.loss.label_smoothing}")
        if self.data.format == "hmdb51" and not self.data.root:
            raise ConfigError("data.format=hmdb51 needs data.root (the videos) and data.train (the split files)")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> FinetuneConfig:
    """The config of a YAML file (or the defaults) with `key=value` overrides applied, validated."""
    return core.load_config(FinetuneConfig, path, overrides)


def config_from_dict(data: dict[str, Any]) -> FinetuneConfig:
    return core.config_from_dict(FinetuneConfig, data)
