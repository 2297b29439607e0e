"""vatt.finetune: official losses and optimiser, weight initialisation, multi-view scoring, the task on the
training engine (learning, resume, best model, two ranks = one process, killed and resumed), image and
multi-label tasks, the configs and the `vatt finetune` command.

This file is also the worker script of the torchrun and kill tests
(`python -m torch.distributed.run ... tests/test_finetune.py OUT_DIR [--set ...] [--hang-at N --marker F]`).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import vatt
from vatt.cli import main
from vatt.data.classification import ClassificationDataset, LabeledItem
from vatt.data.sampling import sample_generator
from vatt.data.sample_data import write_sample_dataset
from vatt.finetune.config import ConfigError, load_config
from vatt.eval.classification import classification_metrics, predict
from tests.conftest import free_port, kill_when_marked, worker_args
from vatt.engine import checkpoint as ckpt
from vatt.engine.progress import read_metrics
from vatt.finetune.task import finetune
from vatt.finetune.weights import init_classifier

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------------

def test_classifier_from_tx_fac_takes_its_backbone(tmp_path):
    torch.manual_seed(1)
    pre = vatt.build_model("tx_fac_tiny")
    vatt.save(pre, tmp_path / "pre")
    clf = vatt.build_model("vit_tiny_classifier")
    head_before = clf.head.classification.weight.clone()
    report = init_classifier(clf, tmp_path / "pre")
    for name, value in clf.backbone.state_dict().items():
        torch.testing.assert_close(value, pre.video_backbone.state_dict()[name])
    torch.testing.assert_close(clf.head.classification.weight, head_before)
    assert report.kind == "tx_fac" and report.left_at_init == ["head.classification.weight", "head.classification.bias"]
    audio = vatt.build_model("wat_tiny_classifier")
    init_classifier(audio, tmp_path / "pre")
    torch.testing.assert_close(audio.backbone.agg_token, pre.audio_backbone.agg_token)


def test_classifier_from_ut_fac_needs_and_uses_the_projections(tmp_path):
    torch.manual_seed(2)
    pre = vatt.build_model("ut_fac_tiny")
    vatt.save(pre, tmp_path / "ut")
    with pytest.raises(ValueError, match="pre_projection"):
        init_classifier(vatt.build_model("vit_tiny_classifier"), tmp_path / "ut")
    cfg = vatt.get_preset("vit_tiny_classifier")
    cfg.video.pre_projection = cfg.video.post_projection = True
    cfg.video.d_post_proj = 64
    clf = vatt.build_model(cfg)
    init_classifier(clf, tmp_path / "ut")
    u = pre.unified_backbone
    torch.testing.assert_close(clf.backbone.transformer.state_dict()["layers.1.mlp.wi.weight"],
                               u.transformer.state_dict()["layers.1.mlp.wi.weight"])
    torch.testing.assert_close(clf.backbone.pre_proj[0].weight, u.pre_proj["video"][0].weight)
    torch.testing.assert_close(clf.backbone.post_proj[0].weight, u.post_proj["video"][0].weight)
    torch.testing.assert_close(clf.backbone.agg_token, u.agg_token["video"])
    torch.testing.assert_close(clf.backbone.tokenizer.proj.weight, u.tokenizers["video"].proj.weight)
    # the same computation: the classifier's pooled feature is the unified model's video feature
    clf.eval(), pre.eval()
    video = torch.rand(2, 8, 64, 64, 3) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(clf(video).features_pooled, pre(video=video).video.features_pooled)


def test_classifier_from_classifier_keeps_a_matching_head_only(tmp_path):
    torch.manual_seed(3)
    src = vatt.build_model("wat_tiny_classifier")
    vatt.save(src, tmp_path / "clf")
    same = vatt.build_model("wat_tiny_classifier")
    init_classifier(same, tmp_path / "clf")
    torch.testing.assert_close(same.head.classification.weight, src.head.classification.weight)
    cfg = vatt.get_preset("wat_tiny_classifier")
    cfg.num_classes = 4
    other = vatt.build_model(cfg)
    report = init_classifier(other, tmp_path / "clf")
    assert "head.classification.weight" in report.left_at_init
    torch.testing.assert_close(other.backbone.agg_token, src.backbone.agg_token)
    with pytest.raises(ValueError, match="audio classifier cannot initialise a video"):
        init_classifier(vatt.build_model("vit_tiny_classifier"), tmp_path / "clf")


def test_positional_tables_are_resampled_for_other_input_sizes(tmp_path):
    src = vatt.build_model("tx_fac_tiny")
    vatt.save(src, tmp_path / "pre")
    cfg = vatt.get_preset("wat_tiny_classifier")
    cfg.audio.max_temporal_buckets = 100  # half the audio length
    clf = vatt.build_model(cfg)
    report = init_classifier(clf, tmp_path / "pre")
    assert report.resized == ["backbone.pos_embedding.tables.temporal 200->100"]
    torch.testing.assert_close(clf.backbone.pos_embedding.tables["temporal"][0],
                               src.audio_backbone.pos_embedding.tables["temporal"][0])


# ------------------------------------------------------------------------------------------------------
# Multi-view scoring
# ------------------------------------------------------------------------------------------------------

class _ViewCounter(torch.nn.Module):
    """A 'classifier' whose logits encode which view of which clip it saw: logit c = the view's mean pixel."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.batch_shapes = []

    def forward(self, x):
        from vatt.model.outputs import ClassifierOutput
        self.batch_shapes.append(tuple(x.shape))
        mean = x.float().reshape(x.shape[0], -1).mean(1, keepdim=True)
        logits = torch.cat([mean, -mean, torch.zeros_like(mean)], dim=1) + self.p
        return ClassifierOutput(logits, logits.softmax(-1), logits, logits)


def test_the_multi_view_test_averages_twelve_views(tmp_path):
    write_sample_dataset(tmp_path, num_clips=3, seed=4)
    data = ClassificationDataset.from_csv(tmp_path / "manifest.csv", path_column="video", train=False,
                                          num_frames=8, fps=10.0, size=32, num_windows=4, multi_crop=True)
    model = _ViewCounter()
    logits, labels = predict(model, data, batch_size=2)
    assert logits.shape == (3, 12, 3) and labels.shape == (3,)
    assert model.batch_shapes[0] == (24, 8, 32, 32, 3)  # 2 clips x 12 views in one forward pass
    views = torch.stack([data[i]["video"] for i in range(3)])  # [3, 12, T, S, S, 3]
    np.testing.assert_allclose(logits[:, :, 0], views.reshape(3, 12, -1).mean(-1).numpy(), rtol=1e-5, atol=1e-6)
    result = classification_metrics(logits, labels, multi_label=False)
    assert result.protocol.num_views == 12 and "mean logits over 12 view(s), then softmax" in result.protocol.aggregation
    # the score is the softmax of the averaged logits, not the average of softmaxes
    from vatt.eval.metrics import topk_accuracy
    mean_logits = logits.mean(1)
    assert result.metrics["top1"] == topk_accuracy(mean_logits, labels, ks=(1,))["top1"]
    audio = ClassificationDataset.from_csv(tmp_path / "manifest.csv", path_column="video", modality="audio",
                                           train=False, audio_samples=4000, sample_rate=8000, num_windows=4)
    assert predict(_ViewCounter(), audio)[0].shape == (3, 4, 3)  # audio: 4 windows, no crops


def test_multilabel_metrics_from_views():
    rng = np.random.default_rng(0)
    targets = rng.random((20, 4)) < 0.4
    targets[0] = targets[1] = [True, True, True, True]
    targets[2] = False
    logits = np.where(targets[:, None, :], 2.0, -2.0) + rng.normal(0, 0.1, (20, 3, 4))
    result = classification_metrics(logits, targets, multi_label=True)
    assert result.metrics["mAP"] == 1.0 and result.metrics["AUC"] == 1.0 and result.protocol.num_views == 3


# ------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------

class SynthTones(Dataset):
    """Class c: a tone at 300 * (c + 1) Hz (8 kHz, 3200 samples) with a random phase and noise.

    Training samples `audio` [N]; evaluation samples [V, N] (V windows of different phases).
    Keys are (epoch, index) pairs or indices, as `vatt.data` datasets take them.
    """

    def __init__(self, n=48, num_classes=3, train=True, views=2, multi_label=False):
        self.n, self.c, self.train, self.views, self.multi_label = n, num_classes, train, views, multi_label
        self.classes = [f"tone{i}" for i in range(num_classes)]

    def __len__(self):
        return self.n

    def _wave(self, c, g):
        t = torch.arange(3200) / 8000
        phase = torch.rand((), generator=g) * 6.28
        return torch.sin(2 * math.pi * 300 * (c + 1) * t + phase) + 0.1 * torch.randn(3200, generator=g)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, (tuple, list)) else (0, key)
        g = sample_generator(7 if self.train else 8, epoch if self.train else 0, i)
        c = i % self.c
        if self.multi_label:
            label = torch.zeros(self.c)
            label[c] = label[(c + 1) % self.c] = 1.0
            wave = lambda: self._wave(c, g) + self._wave((c + 1) % self.c, g)  # noqa: E731
        else:
            label = torch.tensor(c)
            wave = lambda: self._wave(c, g)  # noqa: E731
        audio = wave() if self.train else torch.stack([wave() for _ in range(self.views)])
        return {"audio": audio, "label": label}


def _config(tmp_path, *extra):
    return load_config(None, [
        "model.preset=wat_tiny_classifier", f"run.output_dir={tmp_path}", "run.precision=fp32",
        "data.batch_size=12", "data.num_workers=0", "optim.optimizer=adam", "optim.lr=0.003",
        "optim.warmup_steps=5", "log.every_steps=5", "log.tensorboard=false", "checkpoint.every_steps=0",
        *extra])


def test_finetuning_raises_accuracy_above_chance(tmp_path):
    cfg = _config(tmp_path, "optim.total_steps=40", "eval.every_steps=20")
    result = finetune(cfg, train_dataset=SynthTones(), val_dataset=SynthTones(n=30, train=False))
    assert result.final.metrics["top1"] > 0.8  # chance: 1/3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert [e["step"] for e in result.eval_history] == [20, 40]
    best = vatt.load(result.best["path"])
    assert best.config.num_classes == 3 and (Path(result.best["path"]) / "classes.txt").read_text().split() == \
        ["tone0", "tone1", "tone2"]
    assert json.loads((Path(result.best["path"]) / "best.json").read_text())["metric"] == "top1"
    assert result.best["value"] == max(e["top1"] for e in result.eval_history)


def test_resume_continues_exactly(tmp_path):
    extra = ["optim.total_steps=8", "checkpoint.every_steps=4", "eval.every_steps=0", "optim.grad_clip_norm=0.01"]
    first = finetune(_config(tmp_path / "a", *extra), train_dataset=SynthTones(), val_dataset=None)
    assert first.step == 8
    final = vatt.load(tmp_path / "a" / "checkpoints" / "step_00000008").state_dict()
    import shutil
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step_00000008")
    resumed = finetune(_config(tmp_path / "a", *extra), resume=True, train_dataset=SynthTones(), val_dataset=None)
    assert resumed.step == 8 and [r["step"] for r in resumed.history] == [5, 8]  # only steps 5..8 ran
    again = vatt.load(tmp_path / "a" / "checkpoints" / "step_00000008").state_dict()
    for k in final:
        torch.testing.assert_close(again[k], final[k], msg=k)


def test_a_checkpoint_of_the_earlier_fine_tuning_loop_is_refused_with_what_to_do(tmp_path):
    extra = ["optim.total_steps=2", "optim.warmup_steps=0", "checkpoint.every_steps=0", "eval.every_steps=0"]
    finetune(_config(tmp_path / "a", *extra), train_dataset=SynthTones(), val_dataset=None)
    folder = ckpt.latest_checkpoint(tmp_path / "a" / "checkpoints")
    state = torch.load(folder / ckpt.TRAIN_STATE, weights_only=False)
    state.pop("ranks")  # as the earlier loop wrote them: rank 0's RNG and data position only
    state.update(rng={}, data={"epoch": 0, "batches_in_epoch": 2})
    torch.save(state, folder / ckpt.TRAIN_STATE)
    (folder / "manifest.json").unlink()  # the edit above would otherwise be refused as damage
    with pytest.raises(ValueError, match=r"earlier version of `vatt finetune`.*model\.init_from="):
        finetune(_config(tmp_path / "a", "optim.total_steps=4", *extra[1:]), resume=True, train_dataset=SynthTones(),
                 val_dataset=None)


def test_backbone_gradients_are_clipped_and_the_classifier_is_not(tmp_path):
    from vatt.distributed import init_distributed
    from vatt.engine.loop import Trainer
    from vatt.finetune.task import FinetuneTask

    cfg = _config(tmp_path, "optim.total_steps=1", "optim.grad_clip_norm=1e-3", "optim.warmup_steps=0",
                  "optim.optimizer=sgd", "optim.momentum=0", "optim.lr=1.0")
    env = init_distributed("cpu")
    task = FinetuneTask(cfg, SynthTones())
    run = Trainer(cfg, task, env, task.prepare(env))
    before = {n: p.detach().clone() for n, p in run.raw_model.named_parameters()}
    metrics = run.train_step([next(iter(run.data))])
    moved = {n: (p.detach() - before[n]) for n, p in run.raw_model.named_parameters()}
    backbone = torch.sqrt(sum((d ** 2).sum() for n, d in moved.items() if "classification" not in n))
    head = torch.sqrt(sum((d ** 2).sum() for n, d in moved.items() if "classification" in n))
    assert backbone.item() == pytest.approx(1e-3, rel=1e-3)  # lr 1 x clipped norm
    assert metrics["grad_norm"] > 1e-2 and head.item() > 1e-2


def test_multilabel_audio_with_mixup_reports_map(tmp_path):
    cfg = _config(tmp_path, "optim.total_steps=30", "eval.every_steps=0", "model.overrides.output=sigmoid",
                  "data.mixup=true", "data.audio_noise=0.01")
    result = finetune(cfg, train_dataset=SynthTones(multi_label=True, num_classes=4),
                      val_dataset=SynthTones(n=24, train=False, multi_label=True, num_classes=4))
    assert result.metric == "mAP" and set(result.final.metrics) >= {"mAP", "AUC", "d-prime"}
    # Untrained (same data, seeds 0-2): mAP 0.52 / 0.56 / 0.66, AUC 0.44 / 0.45 / 0.65. Trained: 0.88 / 0.86.
    assert result.final.metrics["mAP"] > 0.8 and result.final.metrics["AUC"] > 0.8
    with pytest.raises(ConfigError, match="sigmoid"):
        finetune(_config(tmp_path / "x", "optim.total_steps=1", "optim.warmup_steps=0"),
                 train_dataset=SynthTones(multi_label=True),
                 val_dataset=None)


def test_image_classification_tiles_images_in_time(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 30, (80, 96, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = load_config(None, [
        "model.preset=vit_tiny_classifier", f"run.output_dir={tmp_path / 'run'}", "run.precision=fp32",
        "data.modality=image", "data.format=folder", f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'val'}",
        "data.batch_size=6", "data.num_workers=0", "optim.optimizer=adam", "optim.lr=0.003", "optim.warmup_steps=2",
        "optim.total_steps=12", "eval.every_steps=0", "checkpoint.every_steps=0", "log.tensorboard=false"])
    from vatt.finetune.data import build_datasets
    train, val, classes, _ = build_datasets(cfg.data, cfg.model.build_config())
    assert classes == ["blue", "red"]
    assert train[0]["video"].shape == (4, 64, 64, 3)  # one image tiled over the temporal patch size
    assert torch.equal(train[0]["video"][0], train[0]["video"][3])
    assert val[0]["video"].shape == (1, 4, 64, 64, 3)  # one view
    result = finetune(cfg)
    assert result.final.protocol.num_views == 1 and result.final.metrics["top1"] >= 0.75


# ------------------------------------------------------------------------------------------------------
# Configs and the command
# ------------------------------------------------------------------------------------------------------

def test_official_defaults_and_config_errors():
    cfg = load_config(None)
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.momentum, cfg.optim.warmup_steps, cfg.optim.total_steps,
            cfg.optim.final_lr, cfg.optim.grad_clip_norm, cfg.optim.classifier_grad_clip_norm) == \
        ("sgd", 0.005, 0.9, 2500, 100_000, 0.0, 0.75, 0.0)
    assert cfg.data.num_windows_test == 4 and cfg.data.multi_crop and cfg.data.mixup_alpha == 5.0
    assert cfg.model.build_config().classifier_dropout == 0.5
    assert cfg.run.precision == "fp32" and cfg.data.audio_stride == 1  # the official models trained in float32
    with pytest.raises(ConfigError, match="optim.lrr.*did you mean 'lr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="not a video_classifier or audio_classifier model"):
        load_config(None, ["model.preset=tx_fac_tiny"])
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(None, ["loss.label_smoothing=1.5"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("finetune_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.build_config().kind in ("video_classifier", "audio_classifier")


def test_cli_finetune_and_evaluate_end_to_end(tmp_path, capsys):
    write_sample_dataset(tmp_path / "data", num_clips=10, seed=5)
    common = ["--config", str(ROOT / "configs" / "finetune_sample_tiny.yaml"),
              "--set", f"data.train={tmp_path / 'data' / 'manifest.csv'}", "--set", f"run.output_dir={tmp_path / 'run'}",
              "--set", "optim.total_steps=3", "--set", "optim.warmup_steps=1", "--set", "data.batch_size=4",
              "--set", "data.num_workers=0", "--set", "data.num_windows_test=2"]
    assert main(["finetune", *common]) == 0
    out = capsys.readouterr().out
    assert "final validation: 2 clips x 6 views" in out and "top1" in out
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["steps"] == 3 and record["final"]["protocol"]["num_views"] == 6
    assert record["best"]["path"] == str(tmp_path / "run" / "best")
    assert main(["finetune", *common, "--evaluate", str(tmp_path / "run" / "best")]) == 0
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["metrics"]["top1"] == record["best"]["metrics"]["top1"]
    assert main(["finetune", "--set", "optim.lrr=1"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_audioset_config_takes_every_other_48k_sample(tmp_path):
    """The shipped AudioSet recipe decodes at 48 kHz and keeps every other sample, as the official loader."""
    from vatt.finetune.data import input_sizes
    from tests.test_decoding import write_wav

    cfg = load_config(ROOT / "configs" / "finetune_audioset_wat_base.yaml")
    sizes = input_sizes(cfg.data, cfg.model.build_config(num_classes=527))
    assert (sizes.sample_rate, sizes.audio_stride, sizes.audio_samples) == (48000, 2, 153600)
    t = np.arange(48000) / 48000
    wav = write_wav(tmp_path / "ramp.wav", 0.9 * np.sin(2 * np.pi * 440 * t), 48000)
    data = ClassificationDataset([LabeledItem(str(wav), 0)], ["tone"], modality="audio", train=False, num_windows=1,
                                 audio_samples=8000, sample_rate=48000, audio_stride=2)
    full = ClassificationDataset([LabeledItem(str(wav), 0)], ["tone"], modality="audio", train=False, num_windows=1,
                                 audio_samples=16000, sample_rate=48000)
    torch.testing.assert_close(data[0]["audio"][0], full[0]["audio"][0][::2], rtol=0, atol=0)


def test_resume_records_where_the_weights_started_even_when_the_source_is_gone(tmp_path, capsys):
    # After --resume, results.json said "random initialisation" for a run that started from a pre-trained
    # model, and naming the original model.init_from failed once that folder had been pruned.
    import shutil

    source = tmp_path / "pretrained"
    torch.manual_seed(3)
    vatt.save(vatt.build_model("tx_fac_tiny"), source)
    extra = [f"model.init_from={source}", "optim.total_steps=4", "optim.warmup_steps=1", "checkpoint.every_steps=2",
             "eval.every_steps=0"]
    first = finetune(_config(tmp_path / "run", *extra), train_dataset=SynthTones(), val_dataset=None)
    assert "tx_fac" in first.init and str(source) in first.init
    shutil.rmtree(first.last_checkpoint)  # resume from step 2
    shutil.rmtree(source)
    extra_more = [e if not e.startswith("optim.total_steps") else "optim.total_steps=6" for e in extra]
    resumed = finetune(_config(tmp_path / "run", *extra_more), resume=True, train_dataset=SynthTones(),
                       val_dataset=None)
    assert resumed.step == 6 and resumed.init == first.init
    with pytest.raises(ValueError, match="not empty"):  # a new run into the same folder is refused
        finetune(_config(tmp_path / "run", *extra_more[1:]), train_dataset=SynthTones(), val_dataset=None)


# ------------------------------------------------------------------------------------------------------
# The engine's shared contract: two ranks = one process; a killed run resumes on the same losses
# ------------------------------------------------------------------------------------------------------
# Dropout draws per rank; without it N ranks compute exactly what one process computes.
NO_DROPOUT = ["model.overrides.classifier_dropout=0", "model.overrides.audio.transformer.dropout_rate=0",
              "model.overrides.audio.pos_dropout_rate=0", "model.overrides.audio.droptoken.enabled=false"]


def _run_worker(out: Path, settings: list[str], *extra: str, nproc: int = 0, **kwargs) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(free_port())] if nproc else []
    return subprocess.Popen([sys.executable, *launcher, __file__, str(out), *[a for s in settings for a in ("--set", s)],
                             *extra], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, **kwargs)


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out)]


def test_two_ranks_match_one_process(tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    settings = ["optim.total_steps=4", "log.every_steps=1", "optim.grad_accum_steps=2", "optim.optimizer=sgd",
                "optim.lr=0.05", "optim.warmup_steps=0", "checkpoint.every_steps=2", *NO_DROPOUT]
    one = finetune(_config(single, *settings), train_dataset=SynthTones(), val_dataset=None)
    proc = _run_worker(double, settings, nproc=2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(_losses(single)) == 4
    assert _losses(double) == pytest.approx(_losses(single), abs=1e-5)  # the same global batch, summed in another order
    two = [r["train_top1"] for r in read_metrics(double)]
    assert two == pytest.approx([r["train_top1"] for r in one.history], abs=1e-6)
    saved = ckpt.load_train_state(ckpt.latest_checkpoint(double / "checkpoints"))
    assert len(saved["ranks"]) == 2 and saved["ranks"][0]["rng"] != saved["ranks"][1]["rng"]  # each rank's own
    a = vatt.load(ckpt.latest_checkpoint(single / "checkpoints")).state_dict()
    b = vatt.load(ckpt.latest_checkpoint(double / "checkpoints")).state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


def test_killed_run_resumes_on_the_same_losses(tmp_path):
    # Dropout, audio noise and mixup draw from the per-step RNG; 2 DataLoader workers; 10 steps over 4 epochs.
    settings = ["optim.total_steps=10", "log.every_steps=1", "checkpoint.every_steps=4", "data.num_workers=2",
                "data.audio_noise=0.05", "data.mixup=true", "model.overrides.classifier_dropout=0.3"]
    reference = tmp_path / "reference"
    finetune(_config(reference, *settings), train_dataset=SynthTones(), val_dataset=None)

    out, marker, log = tmp_path / "killed", tmp_path / "at_step_6", tmp_path / "killed.log"
    with open(log, "w") as stderr:
        proc = _run_worker(out, settings, "--hang-at", "6", "--marker", str(marker), start_new_session=True,
                           stdout=stderr, stderr=subprocess.STDOUT)
    kill_when_marked(proc, marker, log)  # the run and its DataLoader workers
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step_00000004"

    result = finetune(_config(out, *settings), resume=True, train_dataset=SynthTones(), val_dataset=None)
    assert [r["step"] for r in result.history] == list(range(5, 11))
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 11))  # steps 5, 6 of the killed run replaced
    assert _losses(out) == pytest.approx(_losses(reference), abs=1e-6)


def _worker_main() -> None:
    out, overrides, callbacks = worker_args()
    finetune(_config(out, *overrides), train_dataset=SynthTones(), val_dataset=None, callbacks=callbacks)


if __name__ == "__main__":
    _worker_main()
