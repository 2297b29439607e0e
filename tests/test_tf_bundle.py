"""The TensorFlow-free reader of TF2 checkpoints (vatt/checkpoint/tf_bundle.py), on the official parity
checkpoints and on damaged copies of them. One test cross-checks against TensorFlow's own reader."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import shared_path
from vatt.checkpoint.convert_tf import SUFFIX, read_tf_checkpoint
from vatt.checkpoint.tf_bundle import BundleReader, CheckpointError, read_index
from vatt.cli import main as cli
from tests.tf_bundle_writer import write_bundle

CHECKPOINTS = ["tx_fac/ckpt/ckpt-1", "ut_fac/ckpt/ckpt-1", "finetune_vit/ckpt/ckpt-1", "finetune_wat/ckpt/ckpt-1",
               "finetune_vit_from_ut/ckpt/ckpt-1", "train_steps/ckpt/ckpt-4"]


@pytest.fixture(scope="module")
def parity():
    return shared_path("parity", "official-tiny")


def copy_checkpoint(parity, name, tmp_path):
    src = parity / name
    for f in src.parent.glob(src.name + ".*"):
        shutil.copy(f, tmp_path / f.name)
        os.chmod(tmp_path / f.name, 0o644)  # ../shared is read-only; the copies get damaged on purpose
    return tmp_path / src.name


def test_train_steps_checkpoint_holds_the_official_weights_and_adam_slots(parity):
    """Every variable, Adam slot and the step counter equal the official run's own dumps, bit for bit."""
    folder = parity / "train_steps"
    names = json.loads((folder / "config.json").read_text())["variable_name_to_checkpoint_key"]
    weights = np.load(folder / "weights_after_step3.npz")
    slots = np.load(folder / "optimizer_after_step3.npz")
    reader = BundleReader(folder / "ckpt" / "ckpt-4")
    assert len(reader.keys()) == 364
    for var in weights.files:
        key = names[var]["checkpoint_key"]
        got = reader.read(key)
        assert got.dtype == np.float32 and got.shape == weights[var].shape, key
        np.testing.assert_array_equal(got, weights[var], err_msg=key)
        if names[var]["trainable"]:
            for slot in "mv":
                slot_key = key.replace(SUFFIX, f"/.OPTIMIZER_SLOT/optimizer/{slot}{SUFFIX}")
                np.testing.assert_array_equal(reader.read(slot_key), slots[f"{slot}/{var}"], err_msg=slot_key)
    step = reader.read("optimizer/iter" + SUFFIX)
    assert step.dtype == np.int64 and step.shape == () and int(step) == int(slots["iter"]) == 4
    # the object graph is a string tensor: a serialized proto naming the checkpoint's root objects
    graph = reader.read("_CHECKPOINTABLE_OBJECT_GRAPH")
    assert graph.shape == () and b"model" in graph.item() and b"optimizer" in graph.item()


def test_arrays_are_writable_views_that_never_change_the_file(parity, tmp_path):
    prefix = copy_checkpoint(parity, "finetune_wat/ckpt/ckpt-1", tmp_path)
    before = (tmp_path / "ckpt-1.data-00000-of-00001").read_bytes()
    arrays = read_tf_checkpoint(str(prefix) + ".index")  # a path with .index is taken as its prefix
    kernel = arrays["model/layer_with_weights-0/_ops/cls/kernel"]
    kernel[:] = 0  # copy-on-write: allowed, private to this process
    assert (tmp_path / "ckpt-1.data-00000-of-00001").read_bytes() == before
    assert not any(".OPTIMIZER_SLOT" in k or k.startswith("optimizer/") for k in arrays)


def test_flipped_byte_in_a_data_shard_is_refused_naming_file_and_tensor(parity, tmp_path, capsys):
    prefix = copy_checkpoint(parity, "tx_fac/ckpt/ckpt-1", tmp_path)
    _, entries = read_index(prefix)
    key = "model/layer_with_weights-0/_base_layer/vid_backbone/_base/tx/layers/0/mha/q/kernel" + SUFFIX
    shard = tmp_path / "ckpt-1.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[entries[key].offset + entries[key].size // 2] ^= 0x01  # one bit of one float
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{shard}: tensor '{key}' fails its crc32c check"):
        BundleReader(prefix).read(key)
    assert BundleReader(prefix, verify=False).read(key).shape == (64, 64)
    assert cli(["convert-tf", str(prefix), "--preset", "tx_fac_tiny", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and key in err and "crc32c" in err and not (tmp_path / "m").exists()


def test_flipped_byte_in_a_string_tensor_is_refused(parity, tmp_path):
    prefix = copy_checkpoint(parity, "finetune_wat/ckpt/ckpt-1", tmp_path)
    entry = read_index(prefix)[1]["_CHECKPOINTABLE_OBJECT_GRAPH"]
    shard = tmp_path / "ckpt-1.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[entry.offset + entry.size - 3] ^= 0x20
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="_CHECKPOINTABLE_OBJECT_GRAPH' fails its crc32c check"):
        BundleReader(prefix).read("_CHECKPOINTABLE_OBJECT_GRAPH")


def test_truncated_shard_is_refused_naming_file_and_tensor(parity, tmp_path, capsys):
    prefix = copy_checkpoint(parity, "ut_fac/ckpt/ckpt-1", tmp_path)
    shard = tmp_path / "ckpt-1.data-00000-of-00001"
    # cut inside the last model variable of the file (optimizer slots and counters may lie after it)
    entry = max((e for k, e in read_index(prefix)[1].items() if k.startswith("model/") and "OPTIMIZER" not in k),
                key=lambda e: e.offset)
    os.truncate(shard, entry.offset + 10)
    with pytest.raises(CheckpointError, match=f"{shard}: truncated: tensor '{entry.key}' needs bytes "
                                              f"{entry.offset}-{entry.offset + entry.size}, "
                                              f"the file has {entry.offset + 10}"):
        read_tf_checkpoint(str(prefix))
    assert cli(["convert-tf", str(prefix), "--preset", "ut_fac_tiny", "--out", str(tmp_path / "m")]) == 2
    assert f"{shard}: truncated: tensor 'model/" in capsys.readouterr().err
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard}: missing data shard"):
        read_tf_checkpoint(str(prefix))


def test_truncated_or_damaged_index_is_refused_naming_the_file(parity, tmp_path, capsys):
    prefix = copy_checkpoint(parity, "finetune_vit/ckpt/ckpt-1", tmp_path)
    index = tmp_path / "ckpt-1.index"
    good = index.read_bytes()
    index.write_bytes(good[: len(good) - 100])
    with pytest.raises(CheckpointError, match=f"{index}: not a TF checkpoint index, or truncated"):
        read_index(prefix)
    assert cli(["convert-tf", str(prefix), "--preset", "vit_tiny_classifier", "--out", str(tmp_path / "m")]) == 2
    assert f"{index}: not a TF checkpoint index, or truncated" in capsys.readouterr().err
    # a flipped byte inside the first data block (the entries' names and offsets): its block crc fails
    damaged = bytearray(good)
    damaged[40] ^= 0x01
    index.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=f"{index}: the data block .* fails its crc32c check"):
        read_index(prefix)
    index.unlink()
    with pytest.raises(FileNotFoundError, match=f"{index}: no such file"):
        read_index(prefix)


def test_convert_vocab_takes_the_word_table_from_a_checkpoint(parity, tmp_path, capsys):
    for name, key in [("tx_fac", "_base_layer/txt_backbone/embedding/embeddings"),
                      ("ut_fac", "_base_layer/unified_backbone/unified_transformer/raw_to_embeddings/text/embeddings")]:
        prefix = parity / name / "ckpt" / "ckpt-1"
        out = tmp_path / f"{name}.safetensors"
        assert cli(["convert-vocab", str(prefix), "--out", str(out)]) == 0  # no --allow-pickle: no pickle
        expected = BundleReader(prefix).read(f"model/layer_with_weights-0/{key}{SUFFIX}")
        np.testing.assert_array_equal(load_file(str(out))["word_embeddings"], expected)
    assert cli(["convert-vocab", str(parity / "finetune_vit" / "ckpt" / "ckpt-1"), "--out", str(tmp_path / "x")]) == 2
    assert "no word table in this checkpoint" in capsys.readouterr().err


def many_arrays():
    """Every numpy dtype TF shares, strings, scalars, an empty tensor, and offsets that break alignment."""
    rng = np.random.default_rng(0)
    arrays = {f"layer/{i:03d}/kernel": rng.standard_normal((i % 5 + 1, 3)).astype(np.float32) for i in range(120)}
    arrays.update({
        "a/int8": np.arange(-3, 4, dtype=np.int8), "a/float64": rng.standard_normal((2, 3, 4)),
        "a/float16": rng.standard_normal(5).astype(np.float16), "a/int16": np.array([-2, 7], np.int16),
        "a/int32": np.array(-9, np.int32), "a/int64": np.array([1 << 40], np.int64), "a/uint8": np.arange(3, dtype=np.uint8),
        "a/uint16": np.array([65535], np.uint16), "a/uint32": np.array([1 << 31], np.uint32),
        "a/uint64": np.array([1 << 63], np.uint64), "a/bool": np.array([[True], [False]]),
        "a/complex64": np.array([1 + 2j], np.complex64), "a/complex128": np.array([3 - 1j]),
        "a/empty": np.zeros((0, 7), np.float32),
        "a/strings": np.array([[b"", b"x"], [b"\x00\xff", b"long " * 300]], dtype=object),
    })
    return arrays


def assert_reads_back(prefix, arrays):
    reader = BundleReader(prefix)
    assert sorted(reader.keys()) == sorted(arrays)
    for key, value in arrays.items():
        got = reader.read(key)
        assert got.dtype == value.dtype and got.shape == value.shape, key
        assert got.tolist() == value.tolist(), key
        if got.dtype != object:
            assert got.flags.aligned and got.flags.writeable, key  # torch.from_numpy takes it as is
    return reader


def test_several_shards_and_index_blocks_every_dtype(tmp_path):
    arrays = many_arrays()
    write_bundle(tmp_path / "ckpt-7", arrays, num_shards=3, block_size=512)
    reader = assert_reads_back(tmp_path / "ckpt-7", arrays)
    assert reader.header.num_shards == 3 and {e.shard_id for e in reader.entries.values()} == {0, 1, 2}
    assert any(e.offset % 4 for e in reader.entries.values() if e.tf_dtype == 1)  # unaligned float32s occur
    assert len(list(tmp_path.glob("ckpt-7.data-*-of-00003"))) == 3
    (tmp_path / "ckpt-7.data-00002-of-00003").unlink()
    key = next(k for k, e in reader.entries.items() if e.shard_id == 2)
    with pytest.raises(FileNotFoundError, match=f"ckpt-7.data-00002-of-00003: missing data shard"):
        BundleReader(tmp_path / "ckpt-7").read(key)


def test_snappy_compressed_index_blocks(tmp_path, monkeypatch):
    pytest.importorskip("cramjam")  # the dev extra installs it; users need it only for such files
    arrays = many_arrays()
    write_bundle(tmp_path / "s", arrays, num_shards=2, block_size=256, snappy=True)
    assert_reads_back(tmp_path / "s", arrays)
    monkeypatch.setitem(sys.modules, "cramjam", None)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 's.index'}: the .* is Snappy-compressed; reading "
                                              "it needs `pip install cramjam`"):
        read_index(tmp_path / "s")


def test_unknown_reader_is_refused_and_the_tf_reader_says_what_it_needs(parity, tmp_path, monkeypatch, capsys):
    prefix = str(parity / "tx_fac" / "ckpt" / "ckpt-1")
    with pytest.raises(ValueError, match=r"reader must be one of \('native', 'tf'\), got 'pt'"):
        read_tf_checkpoint(prefix, reader="pt")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as where TensorFlow is not installed
    assert cli(["convert-tf", prefix, "--preset", "tx_fac_tiny", "--reader", "tf", "--out", str(tmp_path / "m")]) == 2
    assert 'reader="tf" needs TensorFlow (pip install "vatt[tf]"); the default reader does not' in capsys.readouterr().err


def test_tensorflow_reader_agrees_bit_for_bit(parity, tmp_path):
    """The one test that needs TensorFlow: every tensor of every parity checkpoint, and a two-shard
    checkpoint with more dtypes written by TensorFlow itself, read by both readers."""
    if os.environ.get("CI") == "true":
        import tensorflow as tf  # CI installs the tf extra for this cross-check; it must run there
    else:
        tf = pytest.importorskip("tensorflow")

    def assert_same(prefix):
        ours, theirs = BundleReader(prefix), tf.train.load_checkpoint(str(prefix))
        dtypes = theirs.get_variable_to_dtype_map()
        assert sorted(ours.keys()) == sorted(dtypes)
        for key in ours.keys():
            got, expected = ours.read(key), theirs.get_tensor(key)
            if ours.entries[key].is_string:  # TF hands a scalar string back as bytes
                expected = np.asarray(expected, dtype=object)
                assert got.shape == expected.shape and got.tolist() == expected.tolist(), key
            else:
                assert got.dtype == expected.dtype and got.shape == expected.shape, key
                assert got.tobytes() == expected.tobytes(), key
        return ours

    for name in CHECKPOINTS:
        assert_same(parity / name)
    prefix = str(parity / "tx_fac" / "ckpt" / "ckpt-1")
    via_tf, native = read_tf_checkpoint(prefix, reader="tf"), read_tf_checkpoint(prefix)
    assert sorted(via_tf) == sorted(native) and all(via_tf[k].tobytes() == native[k].tobytes() for k in native)
    assert_same(parity / "train_steps" / "ckpt" / "ckpt-4").read("optimizer/iter" + SUFFIX) == 4
    # Two shards, merged the way TF's sharded saver does, with the dtypes numpy shares with TF.
    rng = np.random.default_rng(0)
    parts = [{"a/float32": rng.standard_normal((3, 5)).astype(np.float32), "a/int64": np.arange(7, dtype=np.int64),
              "a/strings": np.array([b"", b"one", b"two words" * 40], dtype=object)},
             {"b/float16": rng.standard_normal(9).astype(np.float16), "b/bool": np.array([True, False, True]),
              "b/float64": rng.standard_normal((2, 2, 2)), "b/int32": np.array(-3, np.int32),
              "b/uint8": np.arange(5, dtype=np.uint8), "b/empty": np.zeros((0, 4), np.float32)}]
    shards = []
    for i, part in enumerate(parts):
        shards.append(str(tmp_path / f"part{i}"))
        tf.raw_ops.SaveV2(prefix=shards[-1], tensor_names=list(part), shape_and_slices=[""] * len(part),
                          tensors=[tf.constant(v) for v in part.values()])
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shards, destination_prefix=str(tmp_path / "merged"))
    assert sorted(p.name for p in tmp_path.glob("merged.data-*")) == ["merged.data-00000-of-00002",
                                                                       "merged.data-00001-of-00002"]
    ours = assert_same(tmp_path / "merged")
    for part in parts:
        for key, value in part.items():
            got = ours.read(key)
            assert got.shape == value.shape and got.tolist() == value.tolist(), key
    # and TensorFlow reads what the test writer writes: several shards, Snappy blocks, every dtype
    write_bundle(tmp_path / "ours", many_arrays(), num_shards=3, block_size=256, snappy=True)
    assert_same(tmp_path / "ours")
