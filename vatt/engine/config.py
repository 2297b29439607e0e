"""The config core of every experiment: YAML files, `--set a.b=c` overrides, typed checks, shared sections.

An experiment config (`vatt.pretrain.config.PretrainConfig`, `vatt.finetune.config.FinetuneConfig`) is a
dataclass of sections, one per concern, in the manner of the official `ExperimentConfig`:

    model:      which model (a preset of `vatt.configs`, plus overrides of any of its fields)   [ModelSection]
    data:       the experiment's own
    optim:      optimiser and learning-rate schedule                                          [OptimConfig]
    loss:       the experiment's own
    run:        output folder, seed, device, precision, parallelism, divergence guard, limits    [RunConfig]
    checkpoint: how often, how many kept                                                    [CheckpointConfig]
    log:        metrics.jsonl / TensorBoard                                                   [LogConfig]
    eval:       the experiment's own

`load_config(ExperimentClass, path, overrides)` reads a YAML file and `key=value` overrides into it. An
unknown or ill-typed field fails before any work, with a message naming the field, the closest valid name
and the valid names; `validate()` checks ranges and combinations the types cannot.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, TypeVar, get_type_hints

import yaml

from vatt import configs as model_configs
from vatt.precision import PRECISIONS


class ConfigError(ValueError):
    """A config field is unknown, ill-typed or out of range; the message names it."""


# ---------------------------------------------------------------------------------------------------
# Shared sections
# ---------------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """Which model: a preset of `vatt.configs` with overrides of any of its fields; where weights start."""

    KINDS: ClassVar[tuple[str, ...]] = ()  # the model kinds the experiment can train
    preset: str = ""
    # Fields of the preset's model config to change, nested or dotted: {"video.droptoken.enabled": false}.
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    grad_checkpointing: bool = False  # activation checkpointing: less memory, ~30% more compute
    compile: bool = False  # torch.compile the model (needs a C++ compiler on CPU)

    def build_config(self, **fields: Any) -> Any:
        """The model config: the preset, `overrides`, then `fields` (typed and checked by `vatt.configs`)."""
        try:
            preset = model_configs.get_preset(self.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {error_message(e)}") from None
        kind = getattr(preset, "kind", None)
        if kind not in self.KINDS:
            fitting = sorted(n for n, make in model_configs.PRESETS.items() if getattr(make(), "kind", None)
                             in self.KINDS)
            raise ConfigError(f"model.preset: {self.preset!r} is a {kind or type(preset).__name__} config, not a "
                              f"{' or '.join(self.KINDS)} model as this experiment needs; presets that fit: "
                              f"{', '.join(fitting)}")
        if not isinstance(self.overrides, dict):
            raise ConfigError(f"model.overrides: expected a mapping of model-config fields, got {self.overrides!r}")
        merged = deep_merge(model_configs.to_dict(preset), nest(self.overrides, "model.overrides"))
        merged.update(fields)
        try:
            return model_configs.config_from_dict(merged)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"model.overrides: {error_message(e)}") from None


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (`vatt.engine.optim`): linear warm-up to `lr`, then a half
    cosine to `final_lr` at `total_steps`."""

    # "adam": Keras Adam, the official optimiser (ε added to the uncorrected √v); "torch_adam": torch's
    # Adam (ε added after the bias correction); "adamw": torch's AdamW, for weight decay; "sgd": Keras SGD
    # with momentum (the velocity holds the learning rate, as `tf.keras.optimizers.SGD`).
    optimizer: Literal["adam", "torch_adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4  # peak learning rate, reached at the end of the warm-up
    final_lr: float = 0.0  # reached by the cosine at `total_steps`
    warmup_steps: int = 0  # linear from 0 to `lr`
    total_steps: int = 1000  # optimiser steps of the run (the schedule's length and where training stops)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7  # Keras' default; torch's is 1e-8
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    # Decoupled decay of matrices (adamw: torch's θ -= lr·wd·θ; sgd: the official SGDW's θ -= wd·θ);
    # biases, norms, positional tables and embeddings never decay.
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # global-norm clipping of the gradients (see the experiment); 0 = off
    # Micro-batches per optimiser step: saves memory, not the same as a bigger batch for an NCE loss
    # (negatives come from one micro-batch).
    grad_accum_steps: int = 1


@dataclass
class RunConfig:
    output_dir: str = "runs/experiment"
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
    # On CPU, keep the memory blocks a step frees in the heap for the next step (glibc's mmap and trim
    # thresholds, `vatt.engine.memory`): fewer page faults, ~6 % faster bf16 steps. false: glibc's defaults.
    reuse_freed_memory: bool = True


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
class ExperimentConfig:
    """The sections every experiment has; subclasses add `data`, `loss` and `eval` and their own defaults."""

    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Check values that types alone cannot; raise ConfigError naming the field."""
        check_ranges(self, positive=("data.batch_size", "optim.total_steps", "optim.grad_accum_steps",
                                     "checkpoint.keep_last", "log.every_steps", "run.max_consecutive_bad_steps"),
                     non_negative=("data.num_workers", "optim.lr", "optim.final_lr", "optim.warmup_steps",
                                   "optim.weight_decay", "optim.grad_clip_norm", "optim.momentum",
                                   "run.time_limit_minutes", "run.stop_at_step", "checkpoint.every_steps"))
        optim = self.optim
        if self.run.stop_at_step > optim.total_steps:
            raise ConfigError(f"run.stop_at_step={self.run.stop_at_step} is past optim.total_steps="
                              f"{optim.total_steps}, where the schedule ends")
        if optim.warmup_steps and optim.warmup_steps >= optim.total_steps:
            raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} is not below optim.total_steps="
                              f"{optim.total_steps}: the run would end inside the warm-up, never reaching the "
                              f"peak rate; lower optim.warmup_steps below optim.total_steps (0 = no warm-up)")
        if optim.weight_decay > 0 and optim.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optim.weight_decay needs optim.optimizer=adamw or sgd (the coupled L2 decay of "
                              f"{optim.optimizer} is not offered)")
        if self.run.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be one of {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_ranges(cfg: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 probability: tuple[str, ...] = ()) -> None:
    """Raise ConfigError for the first dotted field that is not > 0 / >= 0 / in [0, 1]."""
    for names, ok, what in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
                            (probability, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")):
        for name in names:
            section, attr = name.split(".")
            value = getattr(getattr(cfg, section), attr)
            if not ok(value):
                raise ConfigError(f"{name} must be {what}, got {value}")


# ---------------------------------------------------------------------------------------------------
# Reading: YAML file -> dict, `--set` strings merged in, then a typed build of the dataclasses
# ---------------------------------------------------------------------------------------------------
class YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; accept it (and `1.e-4`, `5E3`) as a float, as YAML 1.2 does."""


YamlLoader.add_implicit_resolver(  # appended after the int and float resolvers, so it sees only what they reject
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))

Experiment = TypeVar("Experiment", bound=ExperimentConfig)


def parse_value(text: str) -> Any:
    """A `--set` value as YAML would read it: 3 -> int, 1e-4 -> float, true -> bool, [a, b] -> list."""
    return yaml.load(text, Loader=YamlLoader) if text.strip() else ""


def load_config(cls: type[Experiment], path: str | Path | None = None, overrides: list[str] = ()) -> Experiment:
    """The `cls` config of a YAML file (or the defaults) with `key=value` overrides applied, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.load(Path(path).read_text(), Loader=YamlLoader) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, ...) at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=3e-4), got {item!r}")
        # A string field keeps the text verbatim (so `run.output_dir=007` stays a string).
        typed = value if field_type(cls, key.split(".")) is str else parse_value(value)
        data = deep_merge(data, nest({key: typed}, ""))
    return config_from_dict(cls, data)


def config_from_dict(cls: type[Experiment], data: dict[str, Any]) -> Experiment:
    try:
        cfg = model_configs.dataclass_from_dict(cls, data)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(error_message(e)) from None
    cfg.validate()
    return cfg


def field_type(cls: type, path: list[str]) -> Any:
    """The annotated type at a dotted path, or None where the path leaves the dataclasses (dicts, unknowns)."""
    for name in path:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = get_type_hints(cls)
        if name not in hints:
            return None  # reported with the valid names when the dataclasses are built
        cls = hints[name]
    return cls


def nest(flat: Mapping[str, Any], where: str) -> dict[str, Any]:
    """{"a.b": 1, "c": {"d.e": 2}} -> {"a": {"b": 1}, "c": {"d": {"e": 2}}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, dict):
            value = nest(value, where)
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where + '.' if where else ''}{key}: {p!r} is set both as a value and as a section")
        node[parts[-1]] = deep_merge(node[parts[-1]], value) if isinstance(node.get(parts[-1]), dict) \
            and isinstance(value, dict) else value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def error_message(e: Exception) -> str:
    # KeyError's str() wraps the message in quotes.
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)
