"""Model folders and checkpoints checked before they are trusted: manifest.json (sizes, SHA-256), resume
falling back past a damaged checkpoint, configs asking for absurd sizes, weights that do not fit their config."""
from __future__ import annotations

import json
import logging
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import vatt
from vatt.checkpoint.io import read_header
from vatt.checkpoint.manifest import DamagedFolder, read_manifest, sha256_file
from vatt.cli import main as cli
from vatt.data.sampling import collate
from vatt.engine import checkpoint as ckpt
from vatt.pretrain.task import pretrain

from tests.test_pretrain_task import SynthClips, tiny_config


@pytest.fixture()
def folder(tmp_path):
    model = vatt.build_model("tx_fac_tiny")
    return vatt.save(model, tmp_path / "m"), model


def _flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_size_and_digest(folder):
    path, _ = folder
    files = read_manifest(path)
    assert sorted(files) == ["config.json", "model.safetensors"]
    for name, entry in files.items():
        assert entry == {"size": (path / name).stat().st_size, "sha256": sha256_file(path / name)}


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing config"])
def test_damaged_folder_is_refused_naming_the_file(folder, damage, capsys):
    path, _ = folder
    weights = path / "model.safetensors"
    if damage == "flipped byte":
        _flip_byte(weights)
        match = r"model\.safetensors: damaged: its SHA-256 differs"
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-4096])
        match = r"model\.safetensors: damaged: \d+ bytes, manifest.json says \d+ \(truncated"
    else:
        (path / "config.json").unlink()
        match = r"config\.json: missing \(incomplete folder"
    with pytest.raises(DamagedFolder, match=match):
        vatt.load(path)
    # every command that reads a model folder says the same, in one line, without a traceback
    assert cli(["embed", str(path), "--text", "a dog", "--out", str(path.parent / "e.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("model.safetensors" in err or "config.json" in err)
    assert not (path.parent / "e.npz").exists()


def test_folder_without_manifest_loads_with_a_notice(folder, caplog):
    path, model = folder
    (path / "manifest.json").unlink()
    caplog.set_level(logging.WARNING, logger="vatt.checkpoint")
    loaded = vatt.load(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} has no manifest.json (written by an older version or by hand): its files cannot be checked"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_absurd_config_is_refused_before_allocating(folder):
    path, _ = folder
    (path / "manifest.json").unlink()  # a folder from somewhere else, by hand
    config = json.loads((path / "config.json").read_text())
    config["video"]["transformer"]["d_model"] = 10**9  # a billion-wide layer: petabytes if built
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config asks for a model of 4\.\d+e\+12 parameters.*largest tensor "
                                         r"video_backbone\.\S+ \[1000000000, 3, 4, 16, 16\]\); refusing it before allocating"):
        vatt.load(path)
    config["video"]["transformer"]["d_model"] = 64
    config["audio"]["transformer"]["num_layers"] = 10**8
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"audio\.transformer\.num_layers=100000000 layers is beyond"):
        vatt.load(path)


def test_weights_that_do_not_fit_the_config_are_refused(folder):
    path, model = folder
    (path / "manifest.json").unlink()
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    # a config of another width than the weights: refused from the header, naming the tensor
    config = json.loads((path / "config.json").read_text())
    config["head"]["d_va"] = 1024
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"weights do not match config\.json: head\.\S+ has shape \[\d+, 64\], "
                                         r"the config gives \[\d+, 1024\]|the config gives \[1024"):
        vatt.load(path)
    config["head"]["d_va"] = model.config.head.d_va
    (path / "config.json").write_text(json.dumps(config))
    # integer weights where the model has floats
    bad = dict(state, **{"head.audio_to_va.bias": state["head.audio_to_va.bias"].to(torch.int32)})
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match=r"head\.audio_to_va\.bias is int32, the model has float32"):
        vatt.load(path)
    # a header that describes more bytes than the file holds (a lying or cut file): refused before reading
    save_file(state, str(weights))
    (n,) = struct.unpack("<Q", weights.read_bytes()[:8])
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(DamagedFolder, match=r"the header describes \d+ \(truncated"):
        vatt.load(path)
    weights.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(DamagedFolder, match=r"header length 1099511627776 does not fit"):
        read_header(weights)


def _run(out, total, **kw):
    cfg = tiny_config(out, "optim.warmup_steps=1", f"optim.total_steps={total}", "checkpoint.every_steps=2",
                      "checkpoint.keep_last=3")
    return pretrain(cfg, train_dataset=SynthClips(16), collate_fn=collate, **kw)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, damage, caplog):
    reference = _run(tmp_path / "reference", 6)
    out = tmp_path / "run"
    _run(out, 4)
    root = out / "checkpoints"
    newest = root / "step_00000004"
    weights = newest / "model.safetensors"
    if damage == "flipped byte":
        _flip_byte(weights, offset=len(weights.read_bytes()) // 2)
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DamagedFolder, match=r"step_00000004/model\.safetensors: damaged"):
        vatt.load(newest)

    caplog.set_level(logging.WARNING, logger="vatt")
    result = _run(out, 6, resume=True)
    assert any("checkpoint step_00000004 is damaged (model.safetensors: damaged" in m
               and "resuming from the newest intact one, step_00000002" in m for m in caplog.messages)
    assert [r["step"] for r in result.history] == [3, 4, 5, 6]  # from step 2, not 4
    assert (root / "step_00000004.damaged").is_dir()  # kept for inspection, out of the way
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002", "step_00000004", "step_00000006"]
    want, got = ckpt.load_weights(reference.last_checkpoint), ckpt.load_weights(result.last_checkpoint)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_every_checkpoint_damaged_stops_the_resume(tmp_path):
    out = tmp_path / "run"
    _run(out, 2)
    _flip_byte(out / "checkpoints" / "step_00000002" / "train_state.pt")
    with pytest.raises(DamagedFolder, match=r"train_state\.pt: damaged.*no older checkpoint .* is intact"):
        _run(out, 4, resume=True)


def test_finetuning_resume_falls_back_past_a_damaged_checkpoint(tmp_path, caplog):
    from tests.test_finetune import SynthTones, _config
    from vatt.finetune.task import finetune
    extra = ["optim.total_steps=8", "checkpoint.every_steps=4", "eval.every_steps=0"]
    first = finetune(_config(tmp_path, *extra), train_dataset=SynthTones(), val_dataset=None)
    final = {k: v.clone() for k, v in ckpt.load_weights(first.last_checkpoint).items()}  # not a view of the file
    weights = first.last_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a partial copy
    caplog.set_level(logging.WARNING, logger="vatt")
    resumed = finetune(_config(tmp_path, *extra), resume=True, train_dataset=SynthTones(), val_dataset=None)
    assert any("checkpoint step_00000008 is damaged" in m and "step_00000004" in m for m in caplog.messages)
    assert [r["step"] for r in resumed.history] == [5, 8]
    again = ckpt.load_weights(resumed.last_checkpoint)
    assert all(torch.equal(again[k], final[k]) for k in final)
