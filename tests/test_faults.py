"""Crashes: a pre-training run on shards killed at many points and resumed ends where an uninterrupted one
does; a DataLoader worker killed by the system stops pre-training, fine-tuning and embedding with a
message, quickly, and the work resumes.

Kills are made deterministic by the fault-injection points of `vatt.faults` (VATT_FAULT=<point>:<n>).
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vatt
from vatt.data.sample_data import write_sample_dataset
from vatt.data.shards import write_shards
from vatt.data.text import WordTokenizer
from vatt.embedding_files import read_embeddings
from vatt.engine import checkpoint as ckpt
from vatt.pretrain.config import load_config
from vatt.pretrain.task import pretrain

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(sample folder, shard folder, vocabulary) of 8 real mp4 clips."""
    out = tmp_path_factory.mktemp("soak")
    write_sample_dataset(out / "sample", num_clips=8, seed=0)
    write_shards(out / "sample" / "manifest.csv", out / "shards", max_count=4)
    with open(out / "sample" / "manifest.csv", encoding="utf-8", newline="") as f:
        WordTokenizer.build(r["caption"] for r in csv.DictReader(f)).save(out / "vocab.txt")
    return out / "sample", out / "shards", out / "vocab.txt"


def _settings(shards: tuple[Path, Path, Path], out: Path) -> list[str]:
    # 8 clips, batch 4, one worker: 2 steps per epoch, 5 epochs; a checkpoint every 2 steps. Dropout,
    # DropToken and the augmentations stay on: resuming must redraw them exactly.
    return [f"run.output_dir={out}", f"data.train={shards[1]}", f"data.vocab={shards[2]}", "data.batch_size=4",
            "data.num_workers=1", "data.shuffle_buffer=3", "data.max_context_sentences=0", "optim.lr=1e-3",
            "optim.warmup_steps=2", f"optim.total_steps={STEPS}", "checkpoint.every_steps=2",
            "checkpoint.keep_last=2", "log.every_steps=1", "log.tensorboard=false", "run.precision=fp32",
            "eval.every_steps=0"]


def _run(settings: list[str], fault: str | None, log: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`vatt pretrain` in its own process group (so that a `:group` fault kills the run and its workers)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("VATT_FAULT", None)
    if fault:
        env["VATT_FAULT"] = fault
    args = [sys.executable, "-m", "vatt", "pretrain", "--resume", *[a for s in settings for a in ("--set", s)]]
    with open(log, "w") as f:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            try:  # leftover workers of a killed main process
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(args, rc, log.read_text(), "")


def test_killed_at_six_points_and_resumed_ends_with_identical_weights(tmp_path, shards):
    reference = tmp_path / "reference"
    pretrain(load_config(None, _settings(shards, reference)))
    want = ckpt.latest_checkpoint(reference / "checkpoints")
    assert want.name == f"step_{STEPS:08d}"

    out = tmp_path / "soak"
    settings = _settings(shards, out)
    root = out / "checkpoints"
    kills = [  # (fault, what must hold after it)
        ("train.step:3", "step_00000002"),                # main process killed after an update, between checkpoints
        ("checkpoint.write:6", "step_00000004"),          # killed with checkpoint 6 half-written
        ("data.decode:3:group", "step_00000004"),         # run and worker killed while decoding clips
        ("checkpoint.written:8", "step_00000008"),        # killed right after checkpoint 8 was renamed into place
        ("data.decode:2", "step_00000008"),               # only the DataLoader worker killed (OOM killer)
        ("resume.loaded:1", "step_00000008"),             # killed while resuming
    ]
    survived = []
    for fault, latest in kills:
        result = _run(settings, fault, tmp_path / f"{fault.replace(':', '_')}.log")
        if fault == "data.decode:2":  # the run reports the dead worker itself
            assert result.returncode == 1, result.stdout[-3000:]
            assert "data-loading worker process died" in result.stdout and "--resume" in result.stdout
            assert "Traceback" not in result.stdout
        else:
            assert result.returncode == -signal.SIGKILL, (fault, result.returncode, result.stdout[-3000:])
        assert ckpt.latest_checkpoint(root).name == latest, (fault, result.stdout[-3000:])
        survived.append(fault)
        if fault == "checkpoint.write:6":
            assert not (root / "step_00000006").exists() and list(root.glob(".tmp-step_00000006-*"))
    result = _run(settings, None, tmp_path / "final.log")
    assert result.returncode == 0, result.stdout[-3000:]
    assert not list(root.glob(".tmp-*"))  # the half-written checkpoint was cleaned up by a later save
    got = ckpt.latest_checkpoint(root)
    assert got.name == want.name and len(survived) == 6
    # Identical weights: the safetensors files are byte for byte the same (0 bytes differ).
    a, b = (want / "model.safetensors").read_bytes(), (got / "model.safetensors").read_bytes()
    bytes_differing = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
    assert bytes_differing == 0, f"{bytes_differing} bytes of the weights differ"
    wa, wb = ckpt.load_weights(want), ckpt.load_weights(got)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_pretraining_worker_killed_by_the_system_stops_quickly_and_resumes(tmp_path, shards):
    # Manifest data: persistent workers, killed from outside as the out-of-memory killer would.
    out = tmp_path / "run"
    settings = [f"run.output_dir={out}", f"data.train={shards[0] / 'manifest.csv'}", f"data.vocab={shards[2]}",
                "data.batch_size=4", "data.num_workers=2", "data.max_context_sentences=0", "optim.warmup_steps=2",
                "optim.total_steps=1000", "checkpoint.every_steps=2", "log.every_steps=1", "log.tensorboard=false",
                "run.precision=fp32"]
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "vatt", "pretrain", *[a for s in settings for a in ("--set", s)]],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while ckpt.latest_checkpoint(out / "checkpoints") is None or not _children(proc.pid):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
        killed = time.monotonic()
        rc = proc.wait(timeout=60)
        seconds = time.monotonic() - killed
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = log.read_text()
    assert rc == 1 and seconds < 10, (rc, seconds, text[-3000:])
    assert "vatt pretrain: error: a data-loading worker process died: DataLoader worker (pid" in text
    # torch names the signal when its SIGCHLD handler sees the death first, else the worker's exit
    assert "killed by signal: Killed" in text or "exited unexpectedly" in text
    assert "the last checkpoint is" in text and "--resume" in text
    assert "Traceback" not in text
    step = int(ckpt.latest_checkpoint(out / "checkpoints").name.split("_")[1])
    result = pretrain(load_config(None, [*settings, f"optim.total_steps={step + 1}", "data.num_workers=0"]),
                      resume=True)
    assert result.step == step + 1 and [r["step"] for r in result.history] == [step + 1]


def _cli(args: list[str], fault: str | None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("VATT_FAULT", None)
    if fault:
        env["VATT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "vatt", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_finetuning_worker_death_stops_with_a_message_and_resumes(tmp_path, shards):
    out = tmp_path / "run"
    args = ["finetune", "--config", str(ROOT / "configs" / "finetune_sample_tiny.yaml"),
            "--set", f"data.train={shards[0] / 'manifest.csv'}", "--set", f"run.output_dir={out}",
            "--set", "optim.total_steps=6", "--set", "optim.warmup_steps=1", "--set", "data.batch_size=2", "--set", "data.num_workers=1",
            "--set", "checkpoint.every_steps=2", "--set", "data.num_windows_test=1", "--set", "eval.every_steps=0"]
    # The worker dies at its 18th file opening (2 per clip: probe and decode), in the 5th batch: the main
    # process, which asks for a batch two ahead, has taken the 3rd, so step 2 and its checkpoint are done.
    died = _cli(args, "data.decode:18")
    assert died.returncode == 1, died.stderr[-3000:]
    assert "vatt finetune: error: a data-loading worker process died" in died.stderr
    assert re.search(r"the last checkpoint is \S+step_0000000[24]: run again with --resume", died.stderr), died.stderr
    assert "Traceback" not in died.stderr
    assert not (out / "results.json").exists()  # no silent partial result
    resumed = _cli([*args, "--resume"], None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["steps"] == 6


def test_embedding_worker_death_writes_nothing_and_says_so(tmp_path, shards):
    sample, _, _ = shards
    model = vatt.save(vatt.build_model("vit_tiny_classifier"), tmp_path / "m")
    args = ["embed", str(model), str(sample / "manifest.csv"), "--workers", "1", "--out", str(tmp_path / "e.npz")]
    died = _cli(args, "data.decode:3")
    assert died.returncode == 1, died.stderr[-3000:]
    assert "vatt embed: error: a data-loading worker process died" in died.stderr
    assert "nothing was written: run it again" in died.stderr and "Traceback" not in died.stderr
    assert not list(tmp_path.glob("e.*"))
    again = _cli(args, None)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(read_embeddings(tmp_path / "e.npz")["path"]) == 8


def test_any_command_reports_a_dead_worker_without_a_traceback(monkeypatch, capsys):
    from vatt.cli import main
    from vatt.commands import evaluate

    def dies(args):
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    monkeypatch.setattr(evaluate, "run", dies)
    assert main(["eval", "retrieval", "m", "clips.csv"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vatt eval: error: a data-loading worker process died: DataLoader worker (pid 4242)")
    assert "run the command again" in err and err.count("\n") == 1

    def bug(args):
        raise RuntimeError("a bug, not a dead worker")
    monkeypatch.setattr(evaluate, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # other errors keep their traceback
        main(["eval", "retrieval", "m", "clips.csv"])


def test_a_broken_batch_handover_counts_as_a_dead_worker():
    # A worker killed while handing a batch over can surface as a broken connection in multiprocessing's
    # resource sharer (the file descriptors of shared tensors) before torch's own check reports it.
    import multiprocessing.resource_sharer as sharer

    from vatt.data.errors import is_worker_death, worker_died

    code = compile("raise ConnectionResetError(104, 'Connection reset by peer')", sharer.__file__, "exec")
    try:
        exec(code, {})
    except ConnectionResetError as e:
        assert is_worker_death(e)
        assert "a data-loading worker process died: its connection broke" in str(worker_died(e, "Resume."))
    try:
        raise ConnectionResetError(104, "Connection reset by peer")  # anywhere else: not a worker's death
    except ConnectionResetError as e:
        assert not is_worker_death(e)
    assert is_worker_death(RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed."))
    assert not is_worker_death(RuntimeError("Caught ValueError in DataLoader worker process 0."))


def test_the_resource_sharers_report_of_a_dead_worker_stays_quiet(monkeypatch, capsys):
    # Its server thread reports a half-open connection through sys.excepthook; the loop says it in one line.
    import multiprocessing.resource_sharer as sharer

    from vatt.data.errors import quiet_resource_sharer_errors

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: seen.append(exc[1]))
    quiet_resource_sharer_errors()
    code = compile("raise EOFError('the worker went away')", sharer.__file__, "exec")
    for error in (code, "raise EOFError('elsewhere')"):
        try:
            exec(error, {})
        except EOFError:
            sys.excepthook(*sys.exc_info())
    assert [str(e) for e in seen] == ["elsewhere"]  # only the one from outside the resource sharer went through
