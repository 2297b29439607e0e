"""Model folders (safetensors + config.json), load reports, and the safe word2vec conversion."""
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vatt
from vatt.checkpoint.io import load_state
from vatt.checkpoint.word2vec import convert_word2vec_pickle, load_word_embeddings
from vatt.cli import main as cli
from vatt.model import build_model


def test_save_load_round_trip(tmp_path):
    model = build_model("ut_fac_tiny").eval()
    vatt.save(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    loaded = vatt.load(tmp_path / "m")
    assert not loaded.training
    text = torch.randint(1, 1024, (2, 16))
    torch.testing.assert_close(loaded(text=text).text_vt, model(text=text).text_vt, rtol=0, atol=0)


def test_load_refuses_shape_mismatch_naming_the_key(tmp_path):
    model = build_model("tx_fac_tiny")
    state = model.state_dict()
    state["head.audio_to_va.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"head\.audio_to_va\.weight.*\(512, 64\).*\(3, 3\)"):
        load_state(model, state)


def test_load_reports_missing_and_unexpected(tmp_path):
    model = build_model("tx_fac_tiny")
    state = dict(model.state_dict())
    del state["head.text_to_vt.bias"]
    state["extra.weight"] = torch.zeros(1)
    report = load_state(model, state)
    assert report.missing == ["head.text_to_vt.bias"] and report.unexpected == ["extra.weight"]
    with pytest.raises(KeyError, match="missing: head.text_to_vt.bias; unexpected: extra.weight"):
        load_state(model, state, strict=True)
    # vatt.load is strict
    vatt.save(model, tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    del weights["head.text_to_vt.bias"]
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "manifest.json").unlink()  # edited by hand: no manifest to vouch for the files
    with pytest.raises(ValueError, match="1 tensors of the model are missing, e.g. head.text_to_vt.bias"):
        vatt.load(tmp_path / "m")


def test_bad_config_json_fails_naming_the_field(tmp_path):
    vatt.save(build_model("tx_fac_tiny"), tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()  # edited by hand below
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["video"]["transformer"]["num_layer"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"video\.transformer\.num_layer.*did you mean 'num_layers'"):
        vatt.load(tmp_path / "m")
    cfg["video"]["transformer"].pop("num_layer")
    cfg["video"]["transformer"]["num_layers"] = "two"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"video\.transformer\.num_layers: expected an integer, got 'two'"):
        vatt.load(tmp_path / "m")


def test_word2vec_pickle_needs_explicit_consent_and_loads_only_arrays(tmp_path):
    table = np.random.RandomState(0).randn(1024, 32).astype(np.float32)
    good = tmp_path / "word2vec.pkl"
    good.write_bytes(pickle.dumps({"word_embeddings": table}))
    with pytest.raises(PermissionError, match="allow_pickle"):
        convert_word2vec_pickle(good, tmp_path / "w.safetensors")
    convert_word2vec_pickle(good, tmp_path / "w.safetensors", allow_pickle=True)
    model = build_model("tx_fac_tiny")
    load_word_embeddings(model, tmp_path / "w.safetensors")
    assert np.array_equal(model.text_backbone.embedding.weight.detach().numpy(), table)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"word_embeddings": Evil()}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        convert_word2vec_pickle(evil, tmp_path / "e.safetensors", allow_pickle=True)


def test_convert_vocab_command(tmp_path):
    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"word_embeddings": np.zeros((4, 3), np.float32)}))
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    assert cli(["convert-vocab", str(tmp_path / "w.pkl"), "--out", str(tmp_path / "w.st")]) == 2
    assert cli(["convert-vocab", str(tmp_path / "w.pkl"), "--allow-pickle", "--out", str(tmp_path / "w.st"),
                "--vocab", str(tmp_path / "vocab.txt")]) == 0
    assert load_file(str(tmp_path / "w.st"))["word_embeddings"].shape == (4, 3)


def test_convert_tf_reports_and_refuses(tmp_path, capsys):
    from tests.conftest import shared_path
    ckpt = shared_path("parity", "official-tiny", "tx_fac", "ckpt") / "ckpt-1"
    # a pre-training checkpoint into a classifier: backbone found, the new head has no source
    assert cli(["convert-tf", str(ckpt), "--preset", "vit_tiny_classifier", "--out", str(tmp_path / "a")]) == 1
    assert "head.classification.weight" in capsys.readouterr().out
    assert cli(["convert-tf", str(ckpt), "--preset", "vit_tiny_classifier", "--allow-missing",
                "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    # the tiny preset's 2x4x4 tables are resampled from the checkpoint's 2x3x2 ones, as official restore does
    assert "resized positional table backbone.pos_embedding.tables.vertical" in out
    model = vatt.load(tmp_path / "a")
    assert model.backbone.pos_embedding.tables["vertical"].shape == (4, 64)
    # wrong preset: a clear error naming the key, no traceback
    assert cli(["convert-tf", str(ckpt), "--preset", "tx_fac_bbs", "--out", str(tmp_path / "b")]) == 2
    assert "shape mismatch for video_backbone.agg_token" in capsys.readouterr().err
