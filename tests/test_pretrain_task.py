"""vatt.pretrain.task: a tiny pre-training run learns; resume, divergence guard, masks, DDP/FSDP equivalence.

Runs the real `tx_fac_tiny` model on synthetic clips (the media pipeline has its own tests) so that a
step takes a fraction of a second. This file is also the worker script of the torchrun test
(`python -m torch.distributed.run ... tests/test_pretrain_task.py OUT_DIR [--set ...]`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from vatt.data.sampling import collate, sample_generator
from tests.conftest import free_port, kill_when_marked, worker_args
from vatt.engine import checkpoint as ckpt
from vatt.pretrain.config import load_config
from vatt.pretrain.task import TrainingDiverged, pretrain
from vatt.engine.progress import Callback, read_metrics

ROOT = Path(__file__).resolve().parents[1]


class SynthClips(Dataset):
    """Clips whose video, audio and caption all show one of `num_classes` classes, plus per-clip noise.

    Keys are (epoch, index) pairs, as `vatt.data` datasets take them; noise comes from the generator
    of (seed, epoch, index), so a clip is the same in whichever process loads it.
    """

    def __init__(self, n: int = 32, num_classes: int = 32, nan_clips: tuple[int, ...] = (), no_text: tuple[int, ...] = (),
                 no_audio: tuple[int, ...] = (), all_nan: bool = False):
        g = torch.Generator().manual_seed(1234)
        self.n = n
        self.video = torch.rand(num_classes, 1, 64, 64, 3, generator=g) * 2 - 1
        self.audio = torch.randn(num_classes, 25600, generator=g)
        self.text = torch.randint(4, 1000, (num_classes, 16), generator=g)
        self.nan_clips, self.no_text, self.no_audio, self.all_nan = set(nan_clips), set(no_text), set(no_audio), all_nan

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        epoch, i = key
        g = sample_generator(0, epoch, i)
        c = i % self.video.shape[0]
        video = (self.video[c].expand(8, -1, -1, -1) + 0.3 * torch.randn(8, 64, 64, 3, generator=g)).clamp(-1, 1)
        if i in self.nan_clips or self.all_nan:
            video[0, 0, 0, 0] = math.nan
        has_audio, has_text = i not in self.no_audio, i not in self.no_text
        audio = (self.audio[c] + 0.5 * torch.randn(25600, generator=g)) * has_audio
        text = self.text[c].clone()
        text[torch.randint(0, 16, (3,), generator=g)] = torch.randint(4, 1000, (3,), generator=g)
        return {"video": video, "audio": audio, "text": text[None] * has_text,
                "audio_mask": torch.tensor(float(has_audio)), "text_mask": torch.tensor(float(has_text)), "index": i}


def tiny_config(out: Path, *overrides: str):
    return load_config(None, [
        f"run.output_dir={out}", "optim.lr=1e-3", "optim.final_lr=5e-4", "optim.warmup_steps=2",
        "optim.total_steps=8", "data.batch_size=8", "data.num_workers=0", "log.every_steps=1",
        "log.tensorboard=false", "checkpoint.every_steps=4", "run.precision=fp32", *overrides])


# At this size and step count, dropout 0.1 slows learning more than the test can wait for.
NO_DROPOUT = ["model.overrides.video.transformer.dropout_rate=0", "model.overrides.audio.transformer.dropout_rate=0",
              "model.overrides.text.transformer.dropout_rate=0", "model.overrides.video.pos_dropout_rate=0",
              "model.overrides.audio.pos_dropout_rate=0"]
# Dropout and DropToken draw per rank; without them N ranks compute exactly what one process computes.
DETERMINISTIC = NO_DROPOUT + ["model.overrides.video.droptoken.enabled=false",
                              "model.overrides.audio.droptoken.enabled=false"]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out)]


def test_tiny_run_learns_and_writes_everything(tmp_path):
    out = tmp_path / "run"
    seen = []

    class Record(Callback):
        def on_step(self, step, metrics):
            seen.append((step, metrics["loss"], metrics["lr"]))

    cfg = tiny_config(out, "optim.total_steps=24", "optim.warmup_steps=2", "checkpoint.every_steps=10",
                      "checkpoint.keep_last=2", "log.tensorboard=true", "eval.every_steps=12", "run.precision=bf16",
                      *NO_DROPOUT)
    result = pretrain(cfg, train_dataset=SynthClips(32), heldout_dataset=SynthClips(16), collate_fn=collate,
                      callbacks=[Record()])
    curve = losses(out)
    assert len(curve) == 24 and [s for s, _, _ in seen] == list(range(1, 25))
    assert sum(curve[-5:]) / 5 < 0.85 * sum(curve[:5]) / 5, curve  # measured: 3.06 -> 2.16
    assert seen[0][2] == 0.0 and seen[2][2] == pytest.approx(1e-3)  # warm-up from 0 to the peak at step 2
    assert result.step == 24 and result.skipped_steps == 0
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000020", "step_00000024"]
    assert result.last_checkpoint == out / "checkpoints" / "step_00000024"
    assert [e["step"] for e in read_metrics(out, "eval")] == [12, 24]
    assert {"text->video/R@1", "text->video/MedR", "audio->video/R@5"} <= set(result.eval_history[-1])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    import vatt
    model = vatt.load(result.last_checkpoint)  # a checkpoint is a model folder
    assert torch.isfinite(model.head.hidden_to_va_bn.running_mean).all()


def test_clips_without_text_or_audio_are_masked_not_dropped(tmp_path):
    # No clip has text: the video-text term is masked out entirely (0); audio is missing for some clips.
    dataset = SynthClips(16, no_text=tuple(range(16)), no_audio=(0, 3, 5))
    result = pretrain(tiny_config(tmp_path, "optim.total_steps=3"), train_dataset=dataset, collate_fn=collate)
    for record in result.history:
        assert record["loss_video_text"] == 0.0
        assert math.isfinite(record["loss_video_audio"]) and record["loss_video_audio"] > 0
        assert record["loss"] == pytest.approx(record["loss_video_audio"] / 2)  # official divisor stays 2


def test_accumulation_checkpointing_adamw_and_clipping(tmp_path):
    cfg = tiny_config(tmp_path, "optim.total_steps=2", "optim.warmup_steps=1", "optim.grad_accum_steps=2",
                      "model.grad_checkpointing=true",
                      "optim.optimizer=adamw", "optim.weight_decay=0.05", "optim.grad_clip_norm=0.5")
    result = pretrain(cfg, train_dataset=SynthClips(16), collate_fn=collate)
    assert result.step == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in result.history)
    saved = ckpt.load_train_state(result.last_checkpoint)
    assert saved["ranks"][0]["data"] == {"epoch": 0, "batches_in_epoch": 4}  # 2 steps x 2 micro-batches = 16 clips


def test_nan_batch_is_skipped_and_counted(tmp_path, caplog):
    # 16 clips, batch 8: clip 5 is in exactly one batch per epoch, so 2 of 4 steps see a NaN.
    caplog.set_level(logging.WARNING, logger="vatt")
    out = tmp_path / "run"
    result = pretrain(tiny_config(out, "optim.total_steps=4", "checkpoint.every_steps=0"),
                      train_dataset=SynthClips(16, nan_clips=(5,)), collate_fn=collate)
    assert result.skipped_steps == 2
    records = read_metrics(out)
    assert records[-1]["skipped_steps"] == 2
    assert sum(r["loss"] is None for r in records) == 2  # the skipped steps' records say so (null, not NaN)
    assert sum("update skipped" in m for m in caplog.messages) == 2
    import vatt
    model = vatt.load(result.last_checkpoint)
    for name, tensor in model.state_dict().items():  # neither weights nor BatchNorm statistics took the NaN
        assert torch.isfinite(tensor.float()).all(), name


def test_too_many_bad_steps_stop_with_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_config(out, "optim.total_steps=2", "optim.warmup_steps=1", "checkpoint.every_steps=2"),
             train_dataset=SynthClips(16),
             collate_fn=collate)
    good = ckpt.latest_checkpoint(out / "checkpoints")
    before = ckpt.load_weights(good)
    cfg = tiny_config(out, "optim.total_steps=10", "checkpoint.every_steps=1", "run.max_consecutive_bad_steps=3")
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps.*NaN/Inf.*step_00000002"):
        pretrain(cfg, resume=True, train_dataset=SynthClips(16, all_nan=True), collate_fn=collate)
    assert ckpt.latest_checkpoint(out / "checkpoints") == good  # skipped steps write no checkpoint
    after = ckpt.load_weights(good)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_killed_run_resumes_on_the_same_loss_curve(tmp_path):
    # bf16 autocast, DropToken and dropout on, 2 DataLoader workers, 12 steps over 3 epochs.
    settings = ["optim.total_steps=12", "checkpoint.every_steps=5", "run.precision=bf16", "data.num_workers=2"]
    reference = tmp_path / "reference"
    pretrain(tiny_config(reference, *settings), train_dataset=SynthClips(32), collate_fn=collate)

    out, marker, log = tmp_path / "killed", tmp_path / "at_step_7", tmp_path / "killed.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, __file__, str(out), "--hang-at", "7", "--marker", str(marker),
                                 *[a for s in settings for a in ("--set", s)]], cwd=ROOT, start_new_session=True,
                                stdout=stderr, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    kill_when_marked(proc, marker, log)  # the run and its DataLoader workers
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step_00000005"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]  # step 7 was killed before its record

    result = pretrain(tiny_config(out, *settings), resume=True, train_dataset=SynthClips(32), collate_fn=collate)
    assert [r["step"] for r in result.history] == list(range(6, 13))
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 13))  # step 6 of the killed run replaced
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, parallel):
    single, double = tmp_path / "one", tmp_path / "two"
    settings = ["optim.total_steps=4", "checkpoint.every_steps=0", f"run.parallel={parallel}", *DETERMINISTIC]
    pretrain(tiny_config(single, *settings), train_dataset=SynthClips(32), collate_fn=collate)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # the worker imports tests.conftest
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), __file__, str(double),
                           *[a for s in settings for a in ("--set", s)]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(double) == pytest.approx(losses(single), abs=2e-4)  # same global batch, summed in another order
    saved = ckpt.load_train_state(ckpt.latest_checkpoint(double / "checkpoints"))
    assert len(saved["ranks"]) == 2
    assert json.loads((ckpt.latest_checkpoint(double / "checkpoints") / "config.json").read_text())["kind"] == "tx_fac"


def _worker_main() -> None:
    out, overrides, callbacks = worker_args()
    pretrain(tiny_config(out, *overrides), train_dataset=SynthClips(32), collate_fn=collate, callbacks=callbacks)


if __name__ == "__main__":
    _worker_main()


def test_new_run_refuses_an_earlier_runs_folder_and_overwrite_starts_over(tmp_path, caplog):
    from vatt.data.text import WordTokenizer

    caplog.set_level(logging.INFO, logger="vatt")
    out = tmp_path / "run"
    tokenizer = WordTokenizer.build(["a red circle", "a blue square"], max_size=16)
    first = pretrain(tiny_config(out, "optim.total_steps=4", "checkpoint.every_steps=2", "eval.every_steps=2",
                                 "eval.max_clips=8"),
                     train_dataset=SynthClips(16), heldout_dataset=SynthClips(8), collate_fn=collate,
                     tokenizer=tokenizer)
    # the periodic held-out check is on the console (through logging), not only in eval.jsonl
    assert sum("held-out retrieval" in m and "text→video R@1" in m and "chance" in m for m in caplog.messages) == 2
    # the tokenizer of the captions goes into every checkpoint: the model folder can embed text
    import vatt
    model = vatt.load(first.last_checkpoint)
    assert model.tokenizer is not None and model.tokenizer.word_to_id == tokenizer.word_to_id
    with pytest.raises(ckpt.OutputDirNotEmpty, match="not empty"):
        pretrain(tiny_config(out, "optim.total_steps=3"), train_dataset=SynthClips(16), collate_fn=collate)
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002", "step_00000004"]
    second = pretrain(tiny_config(out, "optim.total_steps=3", "checkpoint.every_steps=0"), overwrite=True,
                      train_dataset=SynthClips(16), collate_fn=collate)
    assert second.last_checkpoint.is_dir()  # not pruned in favour of the earlier run's higher steps
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000003"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3] and read_metrics(out, "eval") == []


def test_ddp_wrapping_prints_no_deprecation_warning(tmp_path):
    # Under torchrun every rank printed torch's FutureWarning about `broadcast_buffers`.
    import warnings

    import torch.distributed as dist

    from vatt.distributed import DistEnv
    from vatt.engine.parallel import wrap_model
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))  # wrap as for 2 ranks
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wrapped = wrap_model(torch.nn.Linear(3, 2), "ddp", env)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
