"""The pre-training config: the shared sections of `vatt.engine.config` with pre-training's data, loss and
held-out check, and the official recipe's defaults (spec section 7).

    model:      which model (a video-audio-text preset of `vatt.configs`, plus overrides of its fields)
    data:       where the clips come from and how many per step
    optim:      Keras Adam, lr 1e-4 after 5000 warm-up steps, cosine to 5e-5 at step 500k, no clipping
    loss:       AsymmetricNCE settings (spec section 6)
    run:        output folder, seed, device, precision, data/fully-sharded parallelism, divergence guard
    checkpoint: how often, how many kept
    log:        metrics to JSONL / TensorBoard
    eval:       the optional periodic zero-shot retrieval check on held-out clips

An unknown or ill-typed field fails in `load_config` / `PretrainConfig.validate`, before any work, with a
message naming the field, the closest valid name and the valid names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vatt.engine import config as core
from vatt.engine.config import (CheckpointConfig, ConfigError, ExperimentConfig, LogConfig, ModelSection,
                                OptimConfig, RunConfig, check_ranges)

__all__ = ["PretrainConfig", "ModelConfig", "DataConfig", "LossConfig", "EvalConfig", "ConfigError", "load_config",
           "config_from_dict"]


@dataclass
class ModelConfig(ModelSection):
    KINDS: ClassVar[tuple[str, ...]] = ("tx_fac", "ut_fac")  # video-audio-text models
    preset: str = "tx_fac_tiny"
    init_from: str = ""  # a `vatt.save` folder (or a checkpoint) to start from instead of a random initialisation
    # The official frozen word2vec table as safetensors (`vatt convert-vocab`), loaded into the text model;
    # with the official 65,536-word vocabulary (data.vocab) the tx_fac text model needs it.
    word_embeddings: str = ""


@dataclass
class DataConfig:
    # A manifest (CSV / JSON Lines, see `vatt.data.manifest.read_manifest`; `vatt sample-data` writes one)
    # or WebDataset shards written by `vatt shard`: their folder, or "shards/shard-{000000..000099}.tar".
    train: str = ""
    train_where: dict[str, Any] = field(default_factory=dict)  # keep manifest rows by column, e.g. {split: train}
    heldout: str = ""  # a manifest of held-out clips for the periodic retrieval check (eval.every_steps)
    heldout_where: dict[str, Any] = field(default_factory=dict)
    # A vocabulary file (`howto100m_en.txt` or `WordTokenizer.save`); empty: the most frequent words of the
    # training captions, as many as the model's text vocabulary holds (saved as <output_dir>/vocab.txt).
    vocab: str = ""
    # Clips per optimiser step over all ranks and accumulation micro-batches (the official "batch size").
    # Each rank reads batch_size / (world_size · grad_accum_steps) clips per micro-batch.
    batch_size: int = 32
    num_workers: int = 2  # DataLoader worker processes per rank
    # Clip sizes; 0 takes the size the model's positional tables were made for (its max buckets).
    num_frames: int = 0
    frame_size: int = 0
    audio_samples: int = 0
    sample_rate: int = 0
    fps: float = 10.0  # frames are sampled at this rate (official: 10, i.e. stride 1 on HowTo100M)
    max_context_sentences: int = 4  # captions per clip = this + 1 (its own, then its neighbours', then padding)
    # Training augmentation (official values; spec section 1). A horizontal flip reverses left/right motion and
    # colour jitter shifts hues, so data whose captions name directions or colours may want them off.
    scale_jitter_prob: float = 0.8
    flip_prob: float = 0.5
    color_prob: float = 0.8
    audio_noise: float = 0.01  # Gaussian noise sigma as a fraction of max|x|
    shuffle_buffer: int = 256  # shards only



@dataclass
class LossConfig:
    temperature: float = 0.07
    video_text_weight: float = 1.0
    video_audio_weight: float = 1.0



@dataclass
class EvalConfig:
    every_steps: int = 0  # zero-shot retrieval on `data.heldout` every N steps; 0 = off
    max_clips: int = 512  # held-out clips used (the first N of the manifest)



@dataclass
class PretrainOptimConfig(OptimConfig):
    """The official recipe (`configs/experiment.py:Pretrain`): Adam β 0.9/0.999, ε 1e-7, no decay, no
    clipping; lr 1e-4 after 5000 warm-up steps, then a cosine to 5e-5 at step 500k."""

    lr: float = 1e-4
    final_lr: float = 5e-5
    warmup_steps: int = 5000
    total_steps: int = 500_000


@dataclass
class PretrainConfig(ExperimentConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/pretrain"))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Check values that types alone cannot; raise ConfigError naming the field."""
        self.model.build_config()
        super().validate()
        if self.optim.optimizer == "sgd":
            raise ConfigError("optim.optimizer=sgd is fine-tuning's optimiser; pre-training takes adam (official), "
                              "torch_adam or adamw")
        check_ranges(self, positive=("data.fps",),
                     non_negative=("eval.every_steps", "data.num_frames", "data.frame_size", "data.audio_samples",
                                   "data.sample_rate", "data.max_context_sentences"),
                     probability=("data.scale_jitter_prob", "data.flip_prob", "data.color_prob"))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PretrainConfig:
    """The config of a YAML file (or the defaults) with `key=value` overrides applied, validated."""
    return core.load_config(PretrainConfig, path, overrides)


def config_from_dict(data: dict[str, Any]) -> PretrainConfig:
    return core.config_from_dict(PretrainConfig, data)
