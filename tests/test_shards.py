"""WebDataset shards: writing (whole files and cut segments), streaming, splitting, bad input."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vatt.cli import main
from vatt.data import decoding
from vatt.data.pretraining import PretrainDataset
from vatt.data.sampling import SkipCounter, collate
from vatt.data.errors import MediaError
from vatt.data.sample_data import SampleDataConfig, write_sample_dataset
from vatt.data.shards import ShardDataset, cut_segment, iter_tar_samples, list_shards, write_shards
from vatt.data.text import WordTokenizer
from tests.conftest import manifest_rows

SMALL = dict(num_frames=4, fps=2.5, size=32, audio_samples=8000, sample_rate=8000)


@pytest.fixture(scope="module")
def tokenizer(sample_dir) -> WordTokenizer:
    return WordTokenizer.build(r["caption"] for r in manifest_rows(sample_dir / "manifest.csv"))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, sample_dir) -> Path:
    out = tmp_path_factory.mktemp("shards")
    report = write_shards(sample_dir / "manifest.csv", out, max_count=3)
    assert report.num_samples == 10 and report.counts == [3, 3, 3, 1] and report.skipped.total == 0
    return out


def test_layout_index_and_reproducible_bytes(tmp_path, sample_dir, shard_dir):
    shards = list_shards(shard_dir)
    assert [Path(s).name for s in shards] == [f"shard-00000{i}.tar" for i in range(4)]
    index = json.loads((shard_dir / "index.json").read_text())
    assert [e["count"] for e in index["shards"]] == [3, 3, 3, 1] and index["num_samples"] == 10
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames() == ["000000000.mp4", "000000000.json", "000000001.mp4", "000000001.json",
                                  "000000002.mp4", "000000002.json"]
    key, files = next(iter_tar_samples(shards[0]))
    row = manifest_rows(sample_dir / "manifest.csv")[0]
    assert files["mp4"] == (sample_dir / row["video"]).read_bytes()  # the original file bytes
    meta = json.loads(files["json"])
    assert meta["captions"] == [row["caption"]] and meta["fields"]["label"] == row["label"]
    assert meta["offset_s"] == 0.0 and meta["source"] == os.fspath(sample_dir / row["video"])
    again = write_shards(sample_dir / "manifest.csv", tmp_path, max_count=3)
    md5 = [hashlib.md5(Path(p).read_bytes()).hexdigest() for p in (shards, again.shards)[0]]
    assert md5 == [hashlib.md5(Path(p).read_bytes()).hexdigest() for p in again.shards]


def test_size_limit_starts_new_shards(tmp_path, sample_dir):
    size = (sample_dir / "videos/clip_00000.mp4").stat().st_size
    report = write_shards(sample_dir / "manifest.csv", tmp_path, max_count=100, max_size_mb=2.5 * size / 2**20)
    assert all(c <= 2 for c in report.counts) and sum(report.counts) == 10
    assert all(Path(p).stat().st_size <= 2.5 * size + 8 * 1024 for p in report.shards)


def test_webdataset_reads_our_shards(shard_dir):
    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset(list_shards(shard_dir), shardshuffle=False))
    assert len(samples) == 10 and all({"mp4", "json"} <= set(s) for s in samples)


def test_stream_matches_the_manifest_dataset(sample_dir, shard_dir, tokenizer):
    # In evaluation both take the middle window with no randomness: the same tensors.
    stream = ShardDataset(shard_dir, tokenizer, train=False, **SMALL)
    assert stream.num_samples == 10
    by_path = {s["path"]: s for s in stream}
    assert len(by_path) == 10
    manifest = PretrainDataset(sample_dir / "manifest.csv", tokenizer, train=False, **SMALL)
    for i in (0, 7):
        want = manifest[i]
        got = by_path[want["path"]]
        for key in ("video", "audio", "text", "audio_mask", "text_mask"):
            assert torch.equal(got[key], want[key]), key
        assert got["start_s"] == pytest.approx(want["start_s"])


def test_shard_members_are_decoded_from_memory(sample_dir, shard_dir, tokenizer, monkeypatch):
    """No temporary file: with every way of making one disabled, the stream still decodes; and a clip decoded
    from bytes equals the one decoded from the file."""
    import tempfile

    def no_temp_files(*args, **kwargs):
        raise AssertionError("a temporary file was made")

    for name in ("NamedTemporaryFile", "TemporaryFile", "mkstemp", "mkdtemp", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, no_temp_files)
    samples = list(ShardDataset(shard_dir, tokenizer, train=False, **SMALL))
    assert len(samples) == 10
    path = sample_dir / manifest_rows(sample_dir / "manifest.csv")[0]["video"]
    from_file = decoding.decode_clip(path, 0.5, 4, 2.5, 8000, 8000)
    in_memory = decoding.MediaBytes("member.mp4", path.read_bytes())
    from_bytes = decoding.decode_clip(in_memory, 0.5, 4, 2.5, 8000, 8000)
    assert torch.equal(from_bytes.frames, from_file.frames) and torch.equal(from_bytes.audio, from_file.audio)
    assert from_bytes.path == "member.mp4"
    with pytest.raises(MediaError) as err:
        decoding.decode_clip(decoding.MediaBytes("shard-0.tar:x.mp4", b"not a video"), 0.0, 4)
    assert err.value.reason == "corrupt" and "shard-0.tar:x.mp4" in str(err.value)


def test_every_sample_once_per_epoch_across_ranks_and_workers(shard_dir, tokenizer):
    keys = []
    for rank in range(2):
        ds = ShardDataset(shard_dir, tokenizer, rank=rank, world_size=2, shuffle_buffer=4, **SMALL)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate, timeout=120)
        keys.append([k for b in loader for k in b["key"]])
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) == 10 and len(set(keys[0]) | set(keys[1])) == 10
    # Fewer shards than readers: every reader walks all shards and keeps its share.
    ds = ShardDataset(shard_dir, tokenizer, rank=0, world_size=1, **SMALL)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate, timeout=120)
    one = ShardDataset(list_shards(shard_dir)[:1], tokenizer, rank=1, world_size=2, shuffle_buffer=0, **SMALL)
    assert len(list(one)) == 1  # 3 samples, reader 1 of 2 keeps the 2nd
    assert sorted(k for b in loader for k in b["key"]) == sorted(keys[0] + keys[1])


def test_epochs_reshuffle_and_are_reproducible(shard_dir, tokenizer):
    ds = ShardDataset(shard_dir, tokenizer, shuffle_buffer=4, **SMALL)
    first = [s["key"] for s in ds]
    second = [s["key"] for s in ds]  # next pass = next epoch
    assert sorted(first) == sorted(second) and first != second
    ds.set_epoch(0)
    assert [s["key"] for s in ds] == first


def test_cut_segments_of_a_long_file(tmp_path, tokenizer):
    long_dir = tmp_path / "long"
    write_sample_dataset(long_dir, num_clips=1, config=SampleDataConfig(duration_s=16.0))
    video = long_dir / "videos/clip_00000.mp4"
    data, offset = cut_segment(os.fspath(video), 8.0, 11.0)
    (tmp_path / "cut.mkv").write_bytes(data)
    assert offset <= 8.0 and len(data) < video.stat().st_size / 2
    a = decoding.decode_clip(tmp_path / "cut.mkv", 8.0 - offset, num_frames=8, fps=5, audio_samples=8000,
                             sample_rate=8000)
    b = decoding.decode_clip(video, 8.0, num_frames=8, fps=5, audio_samples=8000, sample_rate=8000)
    assert torch.equal(a.frames, b.frames) and torch.allclose(a.audio, b.audio, atol=1e-6)

    manifest = tmp_path / "m.jsonl"
    segments = [(1.0, 2.5, "first words"), (5.0, 6.5, "middle words"), (11.0, 12.5, "last words")]
    manifest.write_text("".join(json.dumps({"video": os.fspath(video), "start": s, "end": e, "caption": c}) + "\n"
                                for s, e, c in segments))
    report = write_shards(manifest, tmp_path / "shards")
    assert report.num_cut == 3 and report.num_samples == 3
    metas = [json.loads(f["json"]) for _, f in iter_tar_samples(os.fspath(report.shards[0]))]
    assert [m["context"] for m in metas] == [["middle words", "last words"], ["first words", "last words"],
                                            ["middle words", "first words"]]
    stream = {s["caption"]: s for s in ShardDataset(report.shards, tokenizer, train=False, **SMALL)}
    direct = PretrainDataset(manifest, tokenizer, train=False, **SMALL)
    for i, (_, _, caption) in enumerate(segments):
        want, got = direct[i], stream[caption]
        assert got["start_s"] == pytest.approx(want["start_s"], abs=2e-3)  # on the source's clock
        assert torch.equal(got["video"], want["video"]) and torch.equal(got["text"], want["text"])


def test_bad_files_are_left_out_and_counted(tmp_path, sample_dir):
    good = manifest_rows(sample_dir / "manifest.csv")[0]["video"]
    (tmp_path / "zero.mp4").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,caption\n{sample_dir / good},a red ball\nzero.mp4,x\nmissing.mp4,y\n")
    report = write_shards(manifest, tmp_path / "out")
    assert report.num_samples == 1 and report.skipped.as_dict() == {"empty_file": 1, "missing_file": 1}
    with pytest.raises(MediaError, match="zero.mp4: empty_file"):
        write_shards(manifest, tmp_path / "out2", strict=True)


def test_stream_skips_bad_samples_and_damaged_shards(tmp_path, sample_dir, shard_dir, tokenizer):
    rows = manifest_rows(sample_dir / "manifest.csv")
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "caption"])
        w.writerows([(sample_dir / r["video"], r["caption"]) for r in rows[:4]])
        w.writerow([sample_dir / rows[4]["video"], "..."])  # no words: bad caption
    write_shards(manifest, tmp_path / "s", max_count=5)
    shard = list_shards(tmp_path / "s")[0]
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(Path(list_shards(shard_dir)[0]).read_bytes()[:-30000])  # cut inside the last sample
    ds = ShardDataset([shard, os.fspath(damaged)], tokenizer, shuffle_buffer=0, **SMALL)
    counter = SkipCounter()
    samples = list(ds)
    for s in samples:
        counter.update(s["skipped"])
    assert len(samples) == 4 + 2
    assert counter.as_dict() in ({"bad_caption": 1, "corrupt": 1}, {"corrupt": 1})  # bad_caption may come last
    strict = ShardDataset([os.fspath(damaged)], tokenizer, strict=True, **SMALL)
    with pytest.raises(MediaError, match="damaged.tar: corrupt"):
        list(strict)
    with pytest.raises(MediaError, match="bad_caption"):
        list(ShardDataset([shard], tokenizer, train=False, **SMALL))


def test_command(tmp_path, sample_dir, capsys):
    code = main(["shard", str(sample_dir / "manifest.csv"), str(tmp_path / "out"), "--max-count", "4",
                 "--where", "split=train"])
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote 8 samples" in out and "2 shards" in out
    assert sum(1 for _ in iter_tar_samples(os.fspath(tmp_path / "out" / "shard-000000.tar"))) == 4
    assert main(["shard", str(tmp_path / "nope.csv"), str(tmp_path / "o")]) == 1


def test_shards_carry_a_vocabulary_that_pretraining_reads(tmp_path, sample_dir, capsys):
    # Training from shards stopped with "data.vocab is required with shards" and nothing built one.
    from vatt.pretrain.config import load_config
    from vatt.pretrain.data import build_tokenizer, iter_captions
    from vatt.pretrain.task import pretrain

    out = tmp_path / "shards"
    write_shards(sample_dir / "manifest.csv", out, max_count=4, where={"split": "train"})
    beside = WordTokenizer.from_vocab_file(out / "vocab.txt")
    captions = [r["caption"] for r in manifest_rows(sample_dir / "manifest.csv") if r["split"] == "train"]
    assert beside.word_to_id == WordTokenizer.build(captions).word_to_id
    assert sorted(iter_captions(str(out))) == sorted(captions)  # the shards' own captions
    # `vatt vocab` builds the same from the manifest (rows selected) or from the shards
    assert main(["vocab", str(sample_dir / "manifest.csv"), "--where", "split=train",
                 "--out", str(tmp_path / "m.txt")]) == 0
    assert main(["vocab", str(out), "--max-size", "8", "--out", str(tmp_path / "s.txt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert WordTokenizer.from_vocab_file(tmp_path / "m.txt").word_to_id == beside.word_to_id
    small = WordTokenizer.from_vocab_file(tmp_path / "s.txt")
    assert small.vocab_size == 8 and all(beside.word_to_id[w] == i for w, i in small.word_to_id.items())
    # no data.vocab: the file beside the shards, cut to the model's vocabulary (most frequent first)
    cfg = load_config(None, [f"data.train={out}", f"run.output_dir={tmp_path / 'run'}", "data.batch_size=4",
                             "data.num_workers=0", "data.max_context_sentences=0", "optim.total_steps=1",
                             "optim.warmup_steps=0", "log.tensorboard=false", "run.precision=fp32",
                             "model.overrides.text.vocab_size=10"])
    tokenizer = build_tokenizer(cfg.data, cfg.model.build_config(), tmp_path / "tok")
    assert tokenizer.vocab_size == 10 and all(beside.word_to_id[w] == i for w, i in tokenizer.word_to_id.items())
    result = pretrain(cfg)
    assert result.step == 1 and (result.last_checkpoint / "vocab.txt").is_file()
