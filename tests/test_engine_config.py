"""vatt.engine.config: the config core both experiments are built on (YAML, `--set`, typed checks, shared sections)."""
import dataclasses

import pytest

from vatt.engine.config import (CheckpointConfig, ConfigError, ExperimentConfig, LogConfig, OptimConfig, RunConfig,
                                deep_merge, nest, parse_value)
from vatt.finetune.config import FinetuneConfig
from vatt.finetune.config import load_config as load_finetune
from vatt.pretrain.config import PretrainConfig
from vatt.pretrain.config import load_config as load_pretrain


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("-2.5E3") == -2500.0
    assert parse_value("true") is True and parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc"


def test_nest_and_merge():
    assert nest({"a.b": 1, "c": {"d.e": 2}}, "") == {"a": {"b": 1}, "c": {"d": {"e": 2}}}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    with pytest.raises(ConfigError, match="both as a value and as a section"):
        nest({"a": 1, "a.b": 2}, "")


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig])
def test_both_experiments_share_the_core_sections(cls):
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, section in (("run", RunConfig), ("checkpoint", CheckpointConfig), ("log", LogConfig)):
        assert type(getattr(cls(), name)) is section, name
    assert isinstance(cls().optim, OptimConfig) and issubclass(cls, ExperimentConfig)
    assert {"model", "data", "optim", "loss", "run", "checkpoint", "log", "eval"} <= set(fields)


@pytest.mark.parametrize("load", [load_pretrain, load_finetune])
def test_shared_fields_are_checked_the_same_way_in_both(load):
    # Fine-tuning now has the engine's time limit and stop step too.
    c = load(None, ["run.time_limit_minutes=1.5", "run.stop_at_step=10", "optim.total_steps=20", "optim.warmup_steps=0"])
    assert c.run.time_limit_minutes == 1.5 and c.run.stop_at_step == 10
    for overrides, names in ((["run.stop_at_step=30", "optim.total_steps=20", "optim.warmup_steps=0"],
                              ["run.stop_at_step", "optim.total_steps"]),
                             (["optim.lrr=1"], ["optim.lrr", "did you mean 'lr'"]),
                             (["checkpoint.keep_last=0"], ["checkpoint.keep_last", "> 0"]),
                             (["run.precision=fp16"], ["run.precision", "bf16"]),
                             (["optim.warmup_steps=50", "optim.total_steps=20"], ["optim.warmup_steps=50"])):
        with pytest.raises(ConfigError) as err:
            load(None, overrides)
        for name in names:
            assert name in str(err.value), (overrides, str(err.value))


def test_each_experiment_keeps_its_official_defaults():
    pre, fine = PretrainConfig(), FinetuneConfig()
    assert (pre.optim.optimizer, pre.optim.lr, pre.run.output_dir, pre.checkpoint.every_steps) == \
        ("adam", 1e-4, "runs/pretrain", 1000)
    assert (fine.optim.optimizer, fine.optim.lr, fine.optim.grad_clip_norm, fine.run.output_dir,
            fine.checkpoint.every_steps, fine.checkpoint.keep_last) == ("sgd", 0.005, 0.75, "runs/finetune", 5000, 2)
    with pytest.raises(ConfigError, match="fine-tuning's optimiser"):
        load_pretrain(None, ["optim.optimizer=sgd"])
