"""vatt.atomic: a write that fails (a full disk) leaves no partial file under the final name and the
previous content intact, in every writer: checkpoints, model folders, embeddings, results, metrics, vocabularies."""
from __future__ import annotations

import errno
import json
import os

import pytest

import vatt
from vatt import atomic
from vatt.atomic import WriteFailed, write_json
from vatt.checkpoint.manifest import verify_folder
from vatt.cli import main as cli
from vatt.data.sampling import collate
from vatt.data.text import WordTokenizer
from vatt.embed import embed_text
from vatt.embedding_files import read_embeddings, write_embeddings
from vatt.engine import checkpoint as ckpt
from vatt.engine.progress import MetricsWriter, read_metrics

from tests.test_pretrain_task import SynthClips, tiny_config


@pytest.fixture()
def disk_full(monkeypatch):
    """After `budget` more bytes, every write fails with ENOSPC (having written what fitted, as a disk does)."""
    real = atomic._write
    state = {"budget": None}

    def write(f, data):
        data = bytes(data)
        if state["budget"] is not None:
            if len(data) > state["budget"]:
                real(f, data[:state["budget"]])
                state["budget"] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            state["budget"] -= len(data)
        return real(f, data)

    monkeypatch.setattr(atomic, "_write", write)

    def fill(budget: int = 0) -> None:
        state["budget"] = budget
    return fill


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob(".tmp-*"))


def test_checkpoint_write_fails_cleanly(tmp_path, disk_full):
    model = vatt.build_model("tx_fac_tiny")
    state = {"progress": {"step": 1}, "optimizer": {}, "ranks": []}
    args = (model.state_dict(), vatt.configs.to_dict(model.config), state, 2)
    good = ckpt.save_checkpoint(tmp_path, 1, *args)
    for budget in (0, 100_000, 3_000_000):  # in the weights' first bytes, in the middle, in train_state.pt
        disk_full(budget)
        with pytest.raises(WriteFailed, match=r"could not write checkpoint step_00000002 \(the previous checkpoint, "
                                              r".*step_00000001, is intact; free space and resume\):.*No space left "
                                              r"on device \(ENOSPC\)"):
            ckpt.save_checkpoint(tmp_path, 2, *args)
        assert ckpt.list_checkpoints(tmp_path) == [good] and _leftovers(tmp_path) == []
    disk_full(None)
    assert verify_folder(good) and vatt.load(good) is not None


def test_model_folder_write_fails_cleanly(tmp_path, disk_full):
    old = vatt.build_model("tx_fac_tiny")
    folder = vatt.save(old, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    disk_full(10_000)
    with pytest.raises(WriteFailed, match=r"could not write weights .*m/model\.safetensors: No space left"):
        vatt.save(vatt.build_model("tx_fac_tiny"), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old folder, whole and verified
    disk_full(None)
    assert verify_folder(folder)


def test_embeddings_write_fails_cleanly(tmp_path, disk_full):
    model = vatt.build_model("tx_fac_tiny").eval()
    model.tokenizer = WordTokenizer.build(["a red ball", "a blue cube"])
    first = embed_text(model, ["a red ball"])
    written = write_embeddings(tmp_path / "emb.npz", text=first)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for budget in (0, 200):  # fails in the first file, or in a later one after the first was complete
        disk_full(budget)
        with pytest.raises(WriteFailed, match=r"could not write embeddings .*emb\.(text\.csv|npz): No space left"):
            write_embeddings(tmp_path / "emb.npz", text=embed_text(model, ["a blue cube", "a red ball"]))
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the set stays consistent
    disk_full(None)
    assert read_embeddings(written[0])["text"].tolist() == ["a red ball"]


def test_results_metrics_and_vocabulary_writes_fail_cleanly(tmp_path, disk_full):
    write_json(tmp_path / "results.json", {"top1": 0.5}, what="results")
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write({"step": 1, "loss": 2.0})
    WordTokenizer.build(["a red ball"]).save(tmp_path / "vocab.txt")
    disk_full(0)
    with pytest.raises(WriteFailed, match=r"could not write results .*results\.json: No space left"):
        write_json(tmp_path / "results.json", {"top1": 0.9}, what="results")
    with pytest.raises(WriteFailed, match=r"could not write vocabulary .*vocab\.txt"):
        WordTokenizer.build(["a blue cube"]).save(tmp_path / "vocab.txt")
    assert json.loads((tmp_path / "results.json").read_text()) == {"top1": 0.5}
    assert (tmp_path / "vocab.txt").read_text().splitlines()[-3:] == ["a", "ball", "red"]
    writer.close()
    # metrics.jsonl is appended; a torn last line (a full disk, a kill mid-write) is dropped on resume
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')
    disk_full(None)
    MetricsWriter(tmp_path, tensorboard=False, resume_step=5).close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    assert _leftovers(tmp_path) == []


def test_commands_stop_with_a_message_and_keep_what_was_there(tmp_path, disk_full, capsys):
    model_dir = vatt.save(vatt.build_model("tx_fac_tiny"), tmp_path / "m",
                          tokenizer=WordTokenizer.build(["a red ball"]))
    disk_full(0)
    assert cli(["embed", str(model_dir), "--text", "a red ball", "--out", str(tmp_path / "e.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vatt embed: error: could not write embeddings") and "No space left on device" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("e.*")) and _leftovers(tmp_path) == []

    # pre-training: the checkpoint after the good one fails; the run stops, the good one resumes
    from vatt.pretrain.task import pretrain
    disk_full(None)
    out = tmp_path / "run"
    cfg = tiny_config(out, "optim.warmup_steps=1", "optim.total_steps=2", "checkpoint.every_steps=2",
                      "log.every_steps=100")
    pretrain(cfg, train_dataset=SynthClips(16), collate_fn=collate)
    disk_full(2000)  # enough to rewrite metrics.jsonl at the resume, not for the next checkpoint
    cfg = tiny_config(out, "optim.total_steps=4", "checkpoint.every_steps=2", "log.every_steps=100")
    with pytest.raises(WriteFailed, match=r"checkpoint step_00000004 \(the previous checkpoint, .*step_00000002, is "
                                          r"intact"):
        pretrain(cfg, resume=True, train_dataset=SynthClips(16), collate_fn=collate)
    disk_full(None)
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_00000002"]
    assert pretrain(cfg, resume=True, train_dataset=SynthClips(16), collate_fn=collate).step == 4


def test_a_real_write_limit_gives_the_same_clean_failure(tmp_path):
    # Not a monkeypatch: the kernel refuses the write (RLIMIT_FSIZE, EFBIG), as a full disk refuses with ENOSPC.
    import resource
    import signal
    import subprocess
    import sys
    model_dir = vatt.save(vatt.build_model("tx_fac_tiny"), tmp_path / "m",
                          tokenizer=WordTokenizer.build(["a red ball"]))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    proc = subprocess.run([sys.executable, "-m", "vatt", "embed", str(model_dir), "--text", "a red ball",
                           "--text", "a blue cube", "--out", str(tmp_path / "e.npz")], preexec_fn=limit,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "could not write embeddings" in proc.stderr and "File too large (EFBIG)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("e.*")) and _leftovers(tmp_path) == []


def test_written_files_and_folders_get_the_usual_permissions(tmp_path):
    # Shared model folders must stay readable by others: not the 0600 / 0700 of a temporary file.
    umask = os.umask(0o022)
    try:
        folder = vatt.save(vatt.build_model("tx_fac_tiny"), tmp_path / "m")
        with atomic.atomic_folder(tmp_path / "c") as tmp:
            atomic.write_text(tmp / "a.txt", "a")
    finally:
        os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [folder, *folder.iterdir(), tmp_path / "c",
                                                              tmp_path / "c" / "a.txt"]}
    assert modes == {"m": "0o755", "model.safetensors": "0o644", "config.json": "0o644", "manifest.json": "0o644",
                     "c": "0o755", "a.txt": "0o644"}
