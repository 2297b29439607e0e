"""The model reproduces the official TF outputs on ../shared/parity/official-tiny (weights converted by
`vatt convert-tf` from the official checkpoints, in the test, in a process where TensorFlow cannot be
imported)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import vatt
from vatt.cli import main as cli
from tests.conftest import shared_path

TOL = 1e-5
FOLDERS = ["tx_fac", "ut_fac", "finetune_vit", "finetune_wat", "finetune_vit_from_ut"]


@pytest.fixture(scope="module")
def parity():
    return shared_path("parity", "official-tiny")


# Conversion must not need TensorFlow: `import tensorflow` fails in the converting process.
NO_TF_CONVERT = """
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
from vatt.cli import main
for name, prefix, config, out in {jobs!r}:
    assert main(["convert-tf", prefix, "--official-config", config, "--out", out]) == 0, name
assert sys.modules["tensorflow"] is None, "something replaced the tensorflow block"
"""


@pytest.fixture(scope="module")
def converted(parity, tmp_path_factory):
    """Every parity checkpoint converted once, by `vatt convert-tf` in a process without TensorFlow."""
    root = tmp_path_factory.mktemp("converted")
    jobs = [(name, str(parity / name / "ckpt" / "ckpt-1"), str(parity / name / "config.json"), str(root / name))
            for name in FOLDERS]
    # the checkpoint written after three training steps (model + Adam slots) holds the tx_fac model
    jobs.append(("train_steps", str(parity / "train_steps" / "ckpt" / "ckpt-4"), str(parity / "tx_fac" / "config.json"),
                 str(root / "train_steps")))
    done = subprocess.run([sys.executable, "-c", NO_TF_CONVERT.format(jobs=jobs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def convert(converted, name):
    return vatt.load(converted / name)


def assert_close(got: torch.Tensor, ref: np.ndarray, key: str):
    got = got.detach().numpy()
    assert got.shape == ref.shape, f"{key}: shape {got.shape} vs official {ref.shape}"
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= TOL, f"{key}: max abs error {err:.2e} > {TOL}"


@pytest.mark.parametrize("name", ["tx_fac", "ut_fac"])
def test_pretraining_models(parity, converted, name):
    model = convert(converted, name)
    inputs = np.load(parity / name / "inputs.npz")
    ref = np.load(parity / name / "outputs.npz")
    with torch.no_grad():
        out = model(video=torch.from_numpy(inputs["video"]), audio=torch.from_numpy(inputs["audio"]),
                    text=torch.from_numpy(inputs["text"]).long())
    got = {
        "video/features": out.video.features, "video/features_pooled": out.video.features_pooled,
        "audio/features": out.audio.features, "audio/features_pooled": out.audio.features_pooled,
        "text/features": out.text.features, "text/features_pooled": out.text.features_pooled,
        "text/attention_mask": out.text.attention_mask.int(),
        "head_stack/bridge/video/toaud": out.video_va, "head_stack/bridge/video/totxt": out.video_vt,
        "head_stack/bridge/audio/tovid": out.audio_va, "head_stack/bridge/text/tovid": out.text_vt,
    }
    assert set(got) | {"text/word_ids"} == set(ref.files)
    for key, value in got.items():
        assert_close(value, ref[key], key)


def test_tx_fac_intermediates(parity, converted):
    """Positional codes and T5 buckets/bias: the pieces whose quirks the spec lists."""
    model = convert(converted, "tx_fac")
    inter = np.load(parity / "tx_fac" / "intermediates.npz")
    with torch.no_grad():
        assert_close(model.video_backbone.pos_embedding.code((2, 3, 2)), inter["video/pos_embedding_after_layernorm"],
                     "video pos code")
        assert_close(model.audio_backbone.pos_embedding.code((20,)), inter["audio/pos_embedding_after_layernorm"],
                     "audio pos code")
        t5 = model.text_backbone.transformer
        from vatt.model.transformer import relative_position_bucket
        pos = torch.arange(17)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], t5.num_buckets, t5.max_distance)
        np.testing.assert_array_equal(bucket.numpy(), inter["text/relative_position_bucket"])
        assert_close(t5.position_bias(17, torch.device("cpu"))[0], inter["text/relative_position_bias"], "T5 bias")


@pytest.mark.parametrize("name", ["finetune_vit", "finetune_wat", "finetune_vit_from_ut"])
def test_classifiers(parity, converted, name):
    model = convert(converted, name)
    inputs = np.load(parity / name / "inputs.npz")
    ref = np.load(parity / name / "outputs.npz")
    inter = np.load(parity / name / "intermediates.npz")
    x = torch.from_numpy(inputs["images"] if "images" in inputs.files else inputs["audio"])
    with torch.no_grad():
        out = model(x)
    assert_close(out.logits, ref["logits"], "logits")
    assert_close(out.probabilities, ref["probabilities"], "probabilities")
    assert_close(out.features_pooled, inter["features_pooled"], "features_pooled")
    assert_close(out.features, inter["features"], "features")
    if name == "finetune_vit":
        # A (3, 5, 1) grid forces the spline resampling of all three tables (2->3, 3->5, 2->1).
        pos = model.backbone.pos_embedding
        for axis, n, key in [("temporal", 3, "temporal_table_2to3"), ("vertical", 5, "vertical_table_3to5"),
                             ("horizontal", 1, "horizontal_table_2to1")]:
            assert_close(pos.table(axis, n), inter[f"interp/{key}"], key)
        with torch.no_grad():
            out = model(torch.from_numpy(inputs["images_interp"]))
        for key in ["logits", "probabilities", "features", "features_pooled"]:
            assert_close(getattr(out, key), inter[f"interp/{key}"], f"interp/{key}")


def test_train_steps_checkpoint_converts_to_the_weights_after_step3(parity, converted):
    """The checkpoint saved after three official training steps converts to exactly those weights."""
    from vatt.checkpoint.convert_tf import SUFFIX, checkpoint_key_map

    model = convert(converted, "train_steps")
    state = model.state_dict()
    after = np.load(parity / "train_steps" / "weights_after_step3.npz")
    names = json.loads((parity / "train_steps" / "config.json").read_text())["variable_name_to_checkpoint_key"]
    by_key = {names[v]["checkpoint_key"][: -len(SUFFIX)]: after[v] for v in after.files}
    key_map = checkpoint_key_map(model, by_key)
    for ours, src in key_map.items():
        expected = np.ascontiguousarray(src.layout([by_key[k] for k in src.keys]))
        np.testing.assert_array_equal(state[ours].numpy(), expected, err_msg=ours)
    # every variable of the official model was compared (q/k/v kernels through our fused projection)
    assert {k for src in key_map.values() for k in src.keys} == set(by_key)
    # the step changed the weights: this is not the starting checkpoint again
    start = convert(converted, "tx_fac").state_dict()
    assert not torch.equal(start["head.audio_to_va.weight"], state["head.audio_to_va.weight"])


def test_official_config_matches_presets_in_structure(parity):
    """The parity configs are the official presets shrunk: same kinds and switches as our presets."""
    from vatt.checkpoint.official_config import from_official_config
    cfg = from_official_config(json.loads((parity / "tx_fac" / "config.json").read_text()))
    bbs = vatt.get_preset("tx_fac_bbs")
    assert (cfg.video.temporal_patch_size, cfg.video.spatial_patch_size) == (bbs.video.temporal_patch_size,
                                                                            bbs.video.spatial_patch_size)
    assert cfg.video.droptoken == bbs.video.droptoken
    assert cfg.text.max_relative_distance == bbs.text.max_relative_distance == 64
    assert cfg.head.bn_momentum == pytest.approx(bbs.head.bn_momentum)
    assert cfg.head.bn_eps == bbs.head.bn_eps


def test_converted_pretraining_model_carries_its_vocabulary(parity, tmp_path, capsys):
    # A converted tx_fac folder had no vocab.txt, so the text commands could not use it.
    from vatt.data.text import WordTokenizer

    vocab = tmp_path / "howto100m_en.txt"
    WordTokenizer.build(["a dog catches a frisbee", "a man cooks"]).save(vocab)
    out = tmp_path / "converted"
    assert cli(["convert-tf", str(parity / "tx_fac" / "ckpt" / "ckpt-1"), "--official-config",
                str(parity / "tx_fac" / "config.json"), "--out", str(out), "--vocab", str(vocab)]) == 0
    assert (out / "vocab.txt").read_text() == vocab.read_text()
    assert vatt.load(out).embed_text(["a dog"]).vt.shape[0] == 1
    assert cli(["convert-tf", str(parity / "tx_fac" / "ckpt" / "ckpt-1"), "--official-config",
                str(parity / "tx_fac" / "config.json"), "--out", str(tmp_path / "bare")]) == 0
    assert "--vocab" in capsys.readouterr().out  # says how to get one
