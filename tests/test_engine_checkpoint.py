"""vatt.engine.checkpoint: atomic writes, keep-last-K, safe loading, RNG round trip."""
import random

import numpy as np
import pytest
import torch

import vatt
from vatt.engine import checkpoint as ckpt


def _save(root, step, keep_last=3, model=None):
    model = model or vatt.build_model("tx_fac_tiny")
    state = {"progress": {"step": step}, "optimizer": {"state": {}, "param_groups": []}, "ranks": [{"rng": ckpt.rng_state()}]}
    return ckpt.save_checkpoint(root, step, model.state_dict(), vatt.configs.to_dict(model.config), state, keep_last)


def test_checkpoint_is_a_model_folder_and_loads_safely(tmp_path):
    model = vatt.build_model("tx_fac_tiny")
    folder = _save(tmp_path, 7, model=model)
    assert folder.name == "step_00000007" and ckpt.latest_checkpoint(tmp_path) == folder
    loaded = vatt.load(folder)  # the same files as vatt.save
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert ckpt.load_train_state(folder)["progress"] == {"step": 7}  # weights_only=True


def test_keeps_the_last_k(tmp_path):
    model = vatt.build_model("tx_fac_tiny")
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep_last=2, model=model)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_crash_mid_write_leaves_latest_intact(tmp_path, monkeypatch):
    model = vatt.build_model("tx_fac_tiny")
    good = _save(tmp_path, 10, model=model)

    def torch_save_then_die(obj, f):
        f.write(b"half a pickle")
        raise KeyboardInterrupt  # the process is stopped while writing train_state.pt

    monkeypatch.setattr(ckpt.torch, "save", torch_save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 20, model=model)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert not list(tmp_path.glob(".tmp-*"))  # an interrupted write cleans up after itself
    ckpt.load_train_state(good)
    vatt.load(good)

    # A killed process (SIGKILL, power loss) cannot clean up: its half-written folder stays hidden...
    stale = tmp_path / ".tmp-step_00000030-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 10)
    assert ckpt.latest_checkpoint(tmp_path) == good
    # ...and the next successful save removes it.
    _save(tmp_path, 40, model=model)
    assert not stale.exists() and ckpt.latest_checkpoint(tmp_path).name == "step_00000040"


def test_resaving_a_step_replaces_it(tmp_path):
    model = vatt.build_model("tx_fac_tiny")
    _save(tmp_path, 5, model=model)
    with torch.no_grad():
        model.head.audio_to_va.bias.fill_(3.0)
    folder = _save(tmp_path, 5, model=model)
    assert torch.all(ckpt.load_weights(folder)["head.audio_to_va.bias"] == 3.0)
    assert len(ckpt.list_checkpoints(tmp_path)) == 1


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    # An earlier run left higher step numbers behind; keep-last-2 by step number alone pruned the new one.
    model = vatt.build_model("tx_fac_tiny")
    for step in (100, 150):
        _save(tmp_path, step, keep_last=2, model=model)
    written = _save(tmp_path, 3, keep_last=2, model=model)
    assert written.is_dir() and (written / "model.safetensors").is_file()
    assert len(ckpt.list_checkpoints(tmp_path)) == 2


def test_a_new_run_refuses_a_folder_holding_an_earlier_one(tmp_path):
    out = tmp_path / "run"
    ckpt.prepare_output_dir(out, resume=False, overwrite=False)  # missing: fine
    out.mkdir()
    ckpt.prepare_output_dir(out, resume=False, overwrite=False)  # empty: fine
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    _save(out / "checkpoints", 100)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ckpt.OutputDirNotEmpty, match="not empty"):
        ckpt.prepare_output_dir(out, resume=False, overwrite=False)
    ckpt.prepare_output_dir(out, resume=True, overwrite=False)  # resuming continues in place
    assert (out / "metrics.jsonl").is_file()
    ckpt.prepare_output_dir(out, resume=False, overwrite=True)
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only what a run writes is deleted


def test_a_worker_death_during_a_checkpoint_write_is_reported_after_it(tmp_path, monkeypatch):
    # torch's DataLoader reports a dead worker from a SIGCHLD handler that raises wherever the main process
    # is; inside torch.save it left a half-written zip and an "unexpected pos" error instead of the reason.
    import os
    import signal

    def worker_died(signum, frame):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed.")

    real_save = torch.save

    def save_and_signal(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGCHLD)  # delivered while the checkpoint is being written
        for _ in range(1000):  # Python runs signal handlers between bytecodes: give it some
            pass
        return real_save(obj, f, *args, **kwargs)

    previous = signal.signal(signal.SIGCHLD, worker_died)
    try:
        monkeypatch.setattr(ckpt.torch, "save", save_and_signal)
        with pytest.raises(RuntimeError, match="is killed by signal"):
            _save(tmp_path, 3)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    folder = ckpt.latest_checkpoint(tmp_path)
    assert folder is not None and folder.name == "step_00000003"  # complete, and verified on load
    assert ckpt.load_train_state(folder)["progress"] == {"step": 3}
    assert ckpt.resumable_checkpoint(tmp_path) == folder
