"""The pre-training config: one dataclass per concern, read from YAML and `--set a.b=c` overrides.

    model:      which model (a preset of `vatt.configs`, plus overrides of any of its fields)
    data:       where the clips come from and how many per step
    optim:      optimiser and learning-rate schedule (the official recipe by default, spec section 7)
    loss:       AsymmetricNCE settings (spec section 6)
    run:        output folder, seed, device, precision, data/fully-sharded parallelism, divergence guard
    checkpoint: how often, how many kept
    log:        metrics to JSONL / TensorBoard
    eval:       the optional periodic zero-shot retrieval check on held-out clips

An unknown or ill-typed field fails in `load_config` / `PretrainConfig.validate`, before any work, with a
message naming the field, the closest valid name and the valid names.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from vatt import configs as model_configs


PRETRAINABLE_KINDS = ("tx_fac", "ut_fac")


@dataclass
class ModelConfig:
    preset: str = "tx_fac_tiny"
    # Fields of the preset's model config to change, nested or dotted: {"video.droptoken.enabled": false}.
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""  # a `vatt.save` folder (or a checkpoint) to start from instead of a random initialisation
    # The official frozen word2vec table as safetensors (`vatt convert-vocab`), loaded into the text model;
    # with the official 65,536-word vocabulary (data.vocab) the tx_fac text model needs it.
    word_embeddings: str = ""
    grad_checkpointing: bool = False  # activation checkpointing: less memory, ~30% more compute
    compile: bool = False  # torch.compile the model (needs a C++ compiler on CPU)

    def build_config(self) -> Any:
        """The model config: the preset with `overrides` applied (typed and checked by `vatt.configs`)."""
        try:
            preset = model_configs.get_preset(self.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {_message(e)}") from None
        if getattr(preset, "kind", None) not in PRETRAINABLE_KINDS:
            raise ConfigError(f"model.preset: {self.preset!r} is a {getattr(preset, 'kind', type(preset).__name__)} "
                              f"config; pre-training needs a video-audio-text model ({', '.join(PRETRAINABLE_KINDS)})")
        if not isinstance(self.overrides, dict):
            raise ConfigError(f"model.overrides: expected a mapping of model-config fields, got {self.overrides!r}")
        merged = _deep_merge(model_configs.to_dict(preset), _nest(self.overrides, "model.overrides"))
        try:
            return model_configs.config_from_dict(merged)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {_message(e)}") from None


@dataclass
class DataConfig:
    # A manifest (CSV / JSON Lines, see `vatt.data.datasets.read_manifest`; `vatt sample-data` writes one)
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
class OptimConfig:
    # "adam": Keras Adam, the official optimiser (ε added to the uncorrected √v); "torch_adam": torch's
    # Adam (ε added after the bias correction); "adamw": torch's AdamW, for weight decay.
    optimizer: Literal["adam", "torch_adam", "adamw"] = "adam"
    lr: float = 1e-4  # peak learning rate, reached at the end of the warm-up
    final_lr: float = 5e-5  # reached by the cosine at `total_steps`
    warmup_steps: int = 5000  # linear from 0 to `lr`
    total_steps: int = 500_000  # optimiser steps of the run (the schedule's length and where training stops)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7  # Keras' default; torch's is 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW) decay of matrices; biases, norms, embeddings never decay
    grad_clip_norm: float = 0.0  # global-norm clipping; 0 = off (official pre-training does not clip)
    # Micro-batches per optimiser step. NCE negatives come from one micro-batch (over all ranks), so
    # accumulation is not the same as a bigger batch for this loss: it saves memory, not negatives.
    grad_accum_steps: int = 1


@dataclass
class LossConfig:
    temperature: float = 0.07
    video_text_weight: float = 1.0
    video_audio_weight: float = 1.0


@dataclass
class RunConfig:
    output_dir: str = "runs/pretrain"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "fp32": float32 throughout, as the official models were trained. "bf16": bf16 autocast; "auto": bf16
    # autocast where the device has fast bf16 (CUDA Ampere+, CPUs with AVX512-BF16/AMX), else float32.
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
    # "ddp": every rank holds the whole model; "fsdp": parameters, gradients and optimiser state sharded.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # Steps whose loss or gradient is NaN/Inf are skipped; this many in a row stop the run.
    max_consecutive_bad_steps: int = 20
    # Stop cleanly with a checkpoint once this much wall time has passed (a scheduler's time limit, a
    # demo's budget); `--resume` continues. 0 = no limit.
    time_limit_minutes: float = 0.0
    # Stop (with a checkpoint) once this many steps are done, keeping the learning-rate schedule of
    # optim.total_steps: a long run in chunks, or a few steps of the official schedule. 0 = optim.total_steps.
    stop_at_step: int = 0


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # also written at the end of the run; 0 = only at the end
    keep_last: int = 3
    enabled: bool = True  # false: write none at all (benchmarks, smoke runs)


@dataclass
class LogConfig:
    every_steps: int = 10  # metrics.jsonl / TensorBoard records, averaged over the interval
    tensorboard: bool = True


@dataclass
class EvalConfig:
    every_steps: int = 0  # zero-shot retrieval on `data.heldout` every N steps; 0 = off
    max_clips: int = 512  # held-out clips used (the first N of the manifest)


@dataclass
class PretrainConfig:
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
        self.model.build_config()
        positive = {"data.batch_size": self.data.batch_size, "optim.total_steps": self.optim.total_steps,
                    "optim.grad_accum_steps": self.optim.grad_accum_steps,
                    "checkpoint.keep_last": self.checkpoint.keep_last, "log.every_steps": self.log.every_steps,
                    "run.max_consecutive_bad_steps": self.run.max_consecutive_bad_steps, "data.fps": self.data.fps}
        non_negative = {"data.num_workers": self.data.num_workers, "optim.warmup_steps": self.optim.warmup_steps,
                        "optim.lr": self.optim.lr, "optim.final_lr": self.optim.final_lr,
                        "optim.weight_decay": self.optim.weight_decay,
                        "optim.grad_clip_norm": self.optim.grad_clip_norm,
                        "run.time_limit_minutes": self.run.time_limit_minutes,
                        "run.stop_at_step": self.run.stop_at_step,
                        "checkpoint.every_steps": self.checkpoint.every_steps,
                        "eval.every_steps": self.eval.every_steps, "data.num_frames": self.data.num_frames,
                        "data.frame_size": self.data.frame_size, "data.audio_samples": self.data.audio_samples,
                        "data.sample_rate": self.data.sample_rate,
                        "data.max_context_sentences": self.data.max_context_sentences}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        for name in ("scale_jitter_prob", "flip_prob", "color_prob"):
            if not 0.0 <= getattr(self.data, name) <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {getattr(self.data, name)}")
        if self.run.stop_at_step > self.optim.total_steps:
            raise ConfigError(f"run.stop_at_step={self.run.stop_at_step} is past optim.total_steps="
                              f"{self.optim.total_steps}, where the schedule ends")
        if self.optim.warmup_steps and self.optim.warmup_steps >= self.optim.total_steps:
            raise ConfigError(f"optim.warmup_steps={self.optim.warmup_steps} is not below optim.total_steps="
                              f"{self.optim.total_steps}: the run would end inside the warm-up, never reaching the "
                              f"peak rate; lower optim.warmup_steps below optim.total_steps (0 = no warm-up)")
        if self.optim.weight_decay > 0 and self.optim.optimizer != "adamw":
            raise ConfigError("optim.weight_decay needs optim.optimizer=adamw (Adam's coupled L2 decay is not offered)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config field is unknown, ill-typed or out of range; the message names it."""


# ---------------------------------------------------------------------------------------------------
# Reading: YAML file -> dict, `--set` strings merged in, then a typed build of the dataclasses
# ---------------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; accept it (and `1.e-4`, `5E3`) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(  # appended after the int and float resolvers, so it sees only what they reject
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def parse_value(text: str) -> Any:
    """A `--set` value as YAML would read it: 3 -> int, 1e-4 -> float, true -> bool, [a, b] -> list."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PretrainConfig:
    """The config of a YAML file (or the defaults) with `key=value` overrides applied, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.load(text, Loader=_Loader) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, ...) at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=3e-4), got {item!r}")
        data = _deep_merge(data, _nest({key.strip(): _typed_for(key.strip(), value)}, ""))
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> PretrainConfig:
    try:
        cfg = model_configs.dataclass_from_dict(PretrainConfig, data)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(_message(e)) from None
    cfg.validate()
    return cfg


def _typed_for(key: str, text: str) -> Any:
    """Parse a `--set` string; a string field keeps the text verbatim (so `run.output_dir=007` stays a string)."""
    tp = _field_type(PretrainConfig, key.split("."))
    return text if tp is str else parse_value(text)


def _field_type(cls: type, path: list[str]) -> Any:
    """The annotated type at a dotted path, or None where the path leaves the dataclasses (dicts, unknowns)."""
    for i, name in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = get_type_hints(cls)
        if name not in hints:
            return None  # reported with the valid names when the dataclasses are built
        cls = hints[name]
    return cls


def _nest(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """{"a.b": 1, "c": {"d.e": 2}} -> {"a": {"b": 1}, "c": {"d": {"e": 2}}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict):
            value = _nest(value, where)
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where + '.' if where else ''}{key}: {p!r} is set both as a value and as a section")
        node[parts[-1]] = _deep_merge(node[parts[-1]], value) if isinstance(node.get(parts[-1]), dict) \
            and isinstance(value, dict) else value
    return out


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _message(e: Exception) -> str:
    # KeyError's str() wraps the message in quotes.
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)

