"""vatt.data.pretraining: pre-training samples from manifests, caption context, skipping bad input, seeding."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.test_decoding import write_wav
from vatt.data.errors import MediaError
from vatt.data.manifest import read_manifest
from vatt.data.pretraining import PretrainDataset, context_neighbours
from vatt.data.sample_data import write_mp4
from vatt.data.sampling import EpochBatchSampler, SkipCounter, collate
from vatt.data.text import WordTokenizer
from tests.conftest import manifest_rows

# Small clips keep the tests fast: 4 frames of 32x32, 1 s of 8 kHz audio.
SMALL = dict(num_frames=4, fps=2.5, size=32, audio_samples=8000, sample_rate=8000)


@pytest.fixture(scope="module")
def tokenizer(sample_dir) -> WordTokenizer:
    return WordTokenizer.build(r["caption"] for r in manifest_rows(sample_dir / "manifest.csv"))


def _write_wav(path: Path, seconds: float = 1.0, rate: int = 8000, freq: float = 440.0) -> None:
    write_wav(path, 0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate), rate)


# --------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------

def test_pretrain_sample_layout(sample_dir, tokenizer):
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, **SMALL)
    assert len(ds) == 10
    s = ds[3]
    assert s["video"].shape == (4, 32, 32, 3) and s["video"].dtype == torch.float32
    assert s["video"].min() >= -1.0 and s["video"].max() <= 1.0
    assert s["audio"].shape == (8000,) and s["audio"].dtype == torch.float32
    assert s["text"].shape == (5, 16) and s["text"].dtype == torch.long
    row = manifest_rows(sample_dir / "manifest.csv")[3]
    # One caption per clip and no neighbours: row 0 is the caption, the other 4 are empty (all pad).
    assert torch.equal(s["text"][0], tokenizer.encode([row["caption"]])[0])
    assert (s["text"][1:] == 0).all()
    assert s["caption"] == row["caption"]
    assert float(s["audio_mask"]) == 1.0 and float(s["text_mask"]) == 1.0
    assert s["path"] == os.fspath(sample_dir / row["video"])
    assert 0.0 <= s["start_s"] <= 4.0 - 1.6 + 1e-6
    assert s["index"] == 3 and s["skipped"] == {}


def test_default_clip_is_the_official_shape(sample_dir, tokenizer):
    # Evaluation transforms: the training ones at 224^2 cost seconds on a busy 2-core machine.
    s = PretrainDataset(sample_dir / "manifest.csv", tokenizer, train=False)[0]
    assert s["video"].shape == (32, 224, 224, 3)  # 32 frames at 10 fps, 224^2
    assert s["audio"].shape == (153600,)  # 3.2 s at 48 kHz


def test_training_samples_are_the_floats_the_previous_colour_jitter_gives(sample_dir, tokenizer, monkeypatch):
    # color_jitter was rewritten for speed; a training sample (decoded frames, the whole augmentation) must
    # not change by a bit.
    from bench.color_jitter import reference_color_jitter
    from vatt.data import transforms
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, **dict(SMALL, size=48), color_prob=1.0)
    new = [ds[i]["video"] for i in range(3)]
    monkeypatch.setattr(transforms, "color_jitter", reference_color_jitter)
    for i, video in enumerate(new):
        assert torch.equal(video, ds[i]["video"])


def test_same_key_same_sample_and_epochs_differ(sample_dir, tokenizer):
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, **SMALL)
    a, b, c = ds[(0, 2)], ds[(0, 2)], ds[(1, 2)]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
    assert a["start_s"] != c["start_s"] and not torch.equal(a["video"], c["video"])
    ds.set_epoch(1)
    assert torch.equal(ds[2]["video"], c["video"])
    other = PretrainDataset(sample_dir / "manifest.csv", tokenizer, seed=7, **SMALL)
    assert not torch.equal(other[(0, 2)]["video"], a["video"])


def test_workers_give_the_same_samples_as_the_main_process(sample_dir, tokenizer):
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, **SMALL)
    sampler = EpochBatchSampler(len(ds), batch_size=4, seed=3)
    sampler.set_position(epoch=5)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate, timeout=120)
    batches = list(loader)
    keys = [k for batch in sampler for k in batch]
    assert len(keys) == 8 and all(e == 5 for e, _ in keys)  # two full batches of 10 clips, keyed by epoch 5
    got = torch.cat([b["video"] for b in batches])
    want = torch.stack([ds[k]["video"] for k in keys])
    assert torch.equal(got, want)
    b = batches[0]
    assert b["video"].shape == (4, 4, 32, 32, 3) and b["text"].shape == (4, 5, 16)
    assert b["audio_mask"].shape == (4,) and b["text_mask"].dtype == torch.float32
    assert isinstance(b["path"], list) and b["skipped"] == {}


def test_seed_none_follows_the_global_rng(sample_dir, tokenizer):
    # For trainers that seed the global RNG per item (seed, epoch, index) themselves.
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, seed=None, **SMALL)
    torch.manual_seed(11)
    a = ds[1]
    torch.manual_seed(11)
    b = ds[1]
    torch.manual_seed(12)
    c = ds[1]
    assert torch.equal(a["video"], b["video"]) and not torch.equal(a["video"], c["video"])


def test_evaluation_is_deterministic_and_multi_window(sample_dir, tokenizer):
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, train=False, **SMALL)
    a, b = ds[(0, 4)], ds[(9, 4)]
    assert torch.equal(a["video"], b["video"])
    assert a["start_s"] == pytest.approx((4.0 - 1.6) / 2)  # the middle window
    multi = PretrainDataset(sample_dir / "manifest.csv", tokenizer, train=False, num_windows=3, **SMALL)[4]
    assert multi["video"].shape == (3, 4, 32, 32, 3) and multi["audio"].shape == (3, 8000)
    with pytest.raises(ValueError, match="num_windows"):
        PretrainDataset(sample_dir / "manifest.csv", tokenizer, num_windows=2, **SMALL)


def test_where_filters_rows(sample_dir, tokenizer):
    train = PretrainDataset(sample_dir / "manifest.csv", tokenizer, where={"split": "train"}, **SMALL)
    test = PretrainDataset(sample_dir / "manifest.csv", tokenizer, where_not={"split": "train"}, **SMALL)
    assert (len(train), len(test)) == (8, 2)
    assert all(r.fields["split"] == "test" for r in test.rows)


def test_neighbour_captions_audio_and_text_masks(tmp_path, sample_dir, tokenizer):
    video = os.fspath(sample_dir / "videos/clip_00000.mp4")
    silent = tmp_path / "silent.mp4"
    write_mp4(silent, np.zeros((20, 32, 32, 3), np.uint8), None, fps=10.0)
    records = [  # one video cut into four captioned segments, listed out of time order
        {"video": video, "start": 2.0, "end": 3.0, "caption": "a blue square"},
        {"video": video, "start": 0.0, "end": 1.0, "caption": "a red circle"},
        {"video": video, "start": 3.0, "end": 4.0, "caption": "a green cross"},
        {"video": video, "start": 1.0, "end": 2.0, "caption": "a yellow triangle"},
        {"video": video, "captions": None, "label": "/m/01"},  # AudioSet style: no text
        {"video": "silent.mp4", "captions": ["red ball", "a red circle moving", "red disc", "red", "ball",
                                             "circle", "moving right"]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rows = read_manifest(manifest)
    assert rows[5].video == os.fspath(silent) and rows[4].fields == {"label": "/m/01"}
    assert context_neighbours(rows)[0] == [3, 2, 1]  # 1-2 s before, 3-4 s after, then 0-1 s
    ds = PretrainDataset(manifest, tokenizer, **SMALL)
    s = ds[0]
    want = tokenizer.encode(["a blue square", "a yellow triangle", "a green cross", "a red circle", ""])
    assert torch.equal(s["text"], want)
    assert 2.0 <= s["start_s"] <= 3.0
    s = ds[4]
    assert float(s["text_mask"]) == 0.0 and (s["text"] == 0).all() and s["caption"] == ""
    s = ds[5]
    assert float(s["audio_mask"]) == 0.0 and (s["audio"] == 0).all()
    # More own captions than L: training draws 5 of them, evaluation takes the first 5.
    own = tokenizer.encode(records[5]["captions"]).tolist()
    assert all(row in own for row in s["text"].tolist())
    ev = PretrainDataset(manifest, tokenizer, train=False, **SMALL)[5]
    assert ev["text"].tolist() == own[:5]


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

GOOD_ROWS = 6


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory, sample_dir):
    """A manifest of good clips followed by one bad row per failure mode -> (manifest, expected reasons)."""
    d = tmp_path_factory.mktemp("bad")
    good = sample_dir / "videos/clip_00001.mp4"
    data = good.read_bytes()
    (d / "zero.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    _write_wav(d / "speech.mp4")  # a WAV file with a video extension: no video stream
    shutil.copy(good, d / "renamed.avi")  # an mp4 with the wrong extension decodes fine
    write_mp4(d / "big.mp4", np.zeros((10, 128, 128, 3), np.uint8), None)
    manifest_rows = [(os.fspath(sample_dir / f"videos/clip_{i:05d}.mp4"), "", "a red circle") for i in range(5)]
    manifest_rows += [
        ("renamed.avi", "", "a green box"),
        ("zero.mp4", "", "a caption"),
        ("truncated.mp4", "", "a caption"),
        ("corrupt.mp4", "", "a caption"),
        ("speech.mp4", "", "a caption"),
        (os.fspath(good), "100", "a clip that starts after the end"),
        ("big.mp4", "", "a big clip"),
        ("missing.mp4", "", "a caption"),
        (os.fspath(good), "", "!!!"),
        (os.fspath(good), "", "word " * 300),
        (os.fspath(good), "", "NOT_UTF8 caption"),
    ]
    reasons = ["empty_file", "corrupt", "corrupt", "no_video_stream", "too_short", "too_large", "missing_file",
               "bad_caption", "bad_caption", "bad_caption"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["video", "start", "caption"])
    writer.writerows(manifest_rows)
    raw = buf.getvalue().encode("utf-8").replace(b"NOT_UTF8", b"caf\xe9 \xff")  # Latin-1 bytes
    (d / "manifest.csv").write_bytes(raw)
    return d / "manifest.csv", reasons


def _bad_dataset(manifest, tokenizer, **kwargs):
    # 64x64 sample clips pass, the 128x128 clip is "too large".
    return PretrainDataset(manifest, tokenizer, max_pixels=64 * 64, **SMALL, **kwargs)


def test_strict_raises_naming_file_and_reason(bad_corpus, tokenizer):
    manifest, reasons = bad_corpus
    ds = _bad_dataset(manifest, tokenizer, strict=True)
    for i, reason in enumerate(reasons):
        row = ds.rows[GOOD_ROWS + i]
        with pytest.raises(MediaError) as info:
            ds[GOOD_ROWS + i]
        assert info.value.reason == reason, (row.video, info.value)
        assert os.path.basename(row.video) in str(info.value)
    assert ds[5]["path"].endswith("renamed.avi")
    with pytest.raises(MediaError, match="not valid UTF-8"):
        ds[len(ds) - 1]
    with pytest.raises(MediaError, match="more than max_caption_chars"):
        ds[len(ds) - 2]


def test_evaluation_always_raises(bad_corpus, tokenizer):
    manifest, _ = bad_corpus
    ds = _bad_dataset(manifest, tokenizer, train=False)
    with pytest.raises(MediaError, match="empty_file"):
        ds[GOOD_ROWS]


def test_training_replaces_and_counts_each_bad_sample(bad_corpus, tokenizer):
    manifest, reasons = bad_corpus
    ds = _bad_dataset(manifest, tokenizer)
    for i, reason in enumerate(reasons):
        s = ds[GOOD_ROWS + i]
        assert s["skipped"].get(reason, 0) >= 1, (reason, s["skipped"])
        assert s["index"] < GOOD_ROWS  # a good row stood in
        assert s["video"].shape == (4, 32, 32, 3)
    assert ds[(0, GOOD_ROWS + 2)]["index"] == ds[(0, GOOD_ROWS + 2)]["index"]  # the stand-in is reproducible


def test_epoch_through_workers_keeps_batches_full_and_counts_skips(bad_corpus, tokenizer):
    manifest, reasons = bad_corpus
    ds = _bad_dataset(manifest, tokenizer)
    sampler = EpochBatchSampler(len(ds), batch_size=4, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate, timeout=120)
    counter = SkipCounter()
    sizes = []
    for batch in loader:
        sizes.append(batch["video"].shape[0])
        assert all(i < GOOD_ROWS for i in batch["index"].tolist())
        counter.update(batch)
    assert sizes == [4, 4, 4, 4]  # 16 rows, none dropped
    expected = {r: reasons.count(r) for r in set(reasons)}
    assert all(counter.counts[r] >= n for r, n in expected.items()), counter
    assert "skipped" in str(counter) and counter.total >= len(reasons)
    assert counter.reset() and counter.total == 0


def test_all_bad_gives_a_clear_error(tmp_path, tokenizer):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,caption\nnone1.mp4,a\nnone2.mp4,b\n", encoding="utf-8")
    ds = PretrainDataset(manifest, tokenizer, max_retries=3, **SMALL)
    with pytest.raises(RuntimeError, match=r"4 samples in a row failed.*missing_file"):
        ds[0]
