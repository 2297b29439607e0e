"""Datasets: pre-training manifests, classification layouts, images, skipping bad input, seeding."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vatt.data.datasets import (
    ClassificationDataset,
    EpochSampler,
    LabeledItem,
    PretrainDataset,
    SkipCounter,
    collate,
    context_neighbours,
    read_manifest,
)
from vatt.data.errors import MediaError
from vatt.data.sample_data import CLASSES, write_mp4, write_sample_dataset
from vatt.data.text import WordTokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Small clips keep the tests fast: 4 frames of 32x32, 1 s of 8 kHz audio.
SMALL = dict(num_frames=4, fps=2.5, size=32, audio_samples=8000, sample_rate=8000)


def shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared test data {path} is missing (required under CI)")
        pytest.skip(f"shared test data {path} is not here")
    return path


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, num_clips=10, seed=0)
    return out


@pytest.fixture(scope="module")
def tokenizer(sample_dir) -> WordTokenizer:
    return WordTokenizer.build(r["caption"] for r in _rows(sample_dir / "manifest.csv"))


def _write_wav(path: Path, seconds: float = 1.0, rate: int = 8000, freq: float = 440.0) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


# --------------------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------------------

def test_pretrain_sample_layout(sample_dir, tokenizer):
    ds = PretrainDataset(sample_dir / "manifest.csv", tokenizer, **SMALL)
    assert len(ds) == 10
    s = ds[3]
    assert s["video"].shape == (4, 32, 32, 3) and s["video"].dtype == torch.float32
    assert s["video"].min() >= -1.0 and s["video"].max() <= 1.0
    assert s["audio"].shape == (8000,) and s["audio"].dtype == torch.float32
    assert s["text"].shape == (5, 16) and s["text"].dtype == torch.long
    row = _rows(sample_dir / "manifest.csv")[3]
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
    sampler = EpochSampler(len(ds), shuffle=True, seed=3)
    sampler.set_epoch(5)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=collate, timeout=120)
    batches = list(loader)
    keys = list(sampler)
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


def test_manifest_errors_name_the_file_and_line(tmp_path, tokenizer):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.mp4,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'video' column"):
        read_manifest(bad)
    bad.write_text("video,start\nx.mp4,soon\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.csv:2: column 'start'"):
        read_manifest(bad)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n{"video": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_manifest(bad)


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
    sampler = EpochSampler(len(ds), shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=collate, timeout=120)
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


# --------------------------------------------------------------------------------------------------
# Sampler, collate, counter
# --------------------------------------------------------------------------------------------------

def test_epoch_sampler_splits_ranks_and_reshuffles():
    parts = [list(EpochSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to equal length
    assert {i for p in parts for _, i in p} == set(range(10))
    assert all(e == 0 for p in parts for e, _ in p)
    s = EpochSampler(10, seed=1, rank=0, world_size=1)
    first = [i for _, i in s]
    s.set_epoch(1)
    second = list(s)
    assert sorted(i for _, i in second) == list(range(10)) and [i for _, i in second] != first
    assert all(e == 1 for e, _ in second)
    assert len(EpochSampler(10, rank=0, world_size=3, drop_last=True)) == 3
    assert [i for _, i in EpochSampler(5, shuffle=False, rank=0, world_size=1)] == [0, 1, 2, 3, 4]


def test_collate_sums_skips_and_names_shape_mismatches():
    samples = [{"x": torch.zeros(2), "s": 1.5, "n": 1, "p": "a", "skipped": {"corrupt": 1}},
               {"x": torch.ones(2), "s": 2.5, "n": 2, "p": "b", "skipped": {"corrupt": 2, "missing_file": 1}}]
    b = collate(samples)
    assert b["x"].shape == (2, 2) and b["s"].dtype == torch.float64 and b["n"].tolist() == [1, 2]
    assert b["p"] == ["a", "b"] and b["skipped"] == {"corrupt": 3, "missing_file": 1}
    samples[1]["x"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"'x'.*\(2,\).*\(3,\)"):
        collate(samples)


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------

CLS = dict(num_frames=4, fps=2.5, size=32)


def test_from_csv_with_split_column_and_class_file(sample_dir):
    rows = _rows(sample_dir / "manifest.csv")
    ds = ClassificationDataset.from_csv(sample_dir / "manifest.csv", path_column="video", label_column="label",
                                        classes=sample_dir / "labels.txt", where={"split": "train"}, **CLS)
    assert ds.classes == list(CLASSES) and len(ds) == 8
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [it.label for it in ds.items] == [int(r["label_index"]) for r in train_rows]
    s = ds[0]
    assert s["video"].shape == (4, 32, 32, 3) and s["label"].dtype == torch.long
    assert int(s["label"]) == int(train_rows[0]["label_index"])


def test_eval_views(sample_dir):
    kw = dict(classes=sample_dir / "labels.txt", path_column="video", label_column="label", train=False, **CLS)
    ds = ClassificationDataset.from_csv(sample_dir / "manifest.csv", num_windows=2, **kw)
    assert ds[0]["video"].shape == (6, 4, 32, 32, 3)  # 3 crops x 2 windows
    assert torch.equal(ds[(0, 0)]["video"], ds[(3, 0)]["video"])
    ds = ClassificationDataset.from_csv(sample_dir / "manifest.csv", num_windows=1, multi_crop=False, **kw)
    s = ds[0]
    assert s["video"].shape == (1, 4, 32, 32, 3) and s["start_s"] == pytest.approx((4.0 - 1.6) / 2)


def test_from_folder_and_official_split_files(tmp_path, sample_dir):
    rows = _rows(sample_dir / "manifest.csv")
    root = tmp_path / "videos"
    for r in rows[:6]:
        folder = root / r["label"].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(sample_dir / r["video"], folder / f"v_{Path(r['video']).stem}.avi")
    ds = ClassificationDataset.from_folder(root, **CLS)
    assert ds.classes == sorted({r["label"].replace(" ", "_") for r in rows[:6]})
    assert len(ds) == 6 and ds[0]["video"].shape == (4, 32, 32, 3)

    # UCF101: classInd.txt, trainlist with 1-based labels, testlist without.
    split_dir = tmp_path / "ucfTrainTestlist"
    split_dir.mkdir()
    (split_dir / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(ds.classes)))
    listed = [(p.parent.name, p.name) for p in sorted(root.rglob("*.avi"))]
    (split_dir / "trainlist01.txt").write_text(
        "".join(f"{c}/{n} {ds.classes.index(c) + 1}\n" for c, n in listed[:4]))
    (split_dir / "testlist01.txt").write_text("".join(f"{c}/{n}\n" for c, n in listed[4:]))
    train = ClassificationDataset.from_ucf101(root, split_dir / "trainlist01.txt", **CLS)
    test = ClassificationDataset.from_ucf101(root, split_dir / "testlist01.txt", train=False, num_windows=1, **CLS)
    assert (len(train), len(test)) == (4, 2)
    assert [ds.classes[it.label] for it in test.items] == [c for c, _ in listed[4:]]
    (split_dir / "trainlist01.txt").write_text(f"{listed[0][0]}/{listed[0][1]} 99\n")
    with pytest.raises(ValueError, match="disagrees"):
        ClassificationDataset.from_ucf101(root, split_dir / "trainlist01.txt", **CLS)

    # HMDB51: <class>_test_split1.txt with 1 = train, 2 = test, 0 = unused.
    hmdb_splits = tmp_path / "testTrainMulti_7030_splits"
    hmdb_splits.mkdir()
    marks = {n: "120"[pos % 3] for pos, (_, n) in enumerate(listed)}
    by_class: dict[str, list[str]] = {}
    for c, n in listed:
        by_class.setdefault(c, []).append(n)
    for c, names in by_class.items():
        (hmdb_splits / f"{c}_test_split1.txt").write_text("".join(f"{n} {marks[n]} \n" for n in names))
    train = ClassificationDataset.from_hmdb51(root, hmdb_splits, split=1, subset="train", **CLS)
    test = ClassificationDataset.from_hmdb51(root, hmdb_splits, split=1, subset="test", **CLS)
    assert len(train) == 2 and len(test) == 2 and train.classes == ds.classes
    assert {Path(it.path).name for it in test.items} == {n for n, m in marks.items() if m == "2"}
    assert not {it.path for it in train.items} & {it.path for it in test.items}


def test_audio_folds_and_multi_label(tmp_path):
    # ESC-50 layout: meta CSV with filename, fold, target, category.
    (tmp_path / "audio").mkdir()
    lines = ["filename,fold,target,category"]
    for i in range(6):
        name = f"{i}.wav"
        _write_wav(tmp_path / "audio" / name, seconds=1.0, rate=8000, freq=300 + 100 * i)
        lines.append(f"{name},{i % 3 + 1},{i % 2 * 10},{'dog' if i % 2 else 'rain'}")
    (tmp_path / "esc50.csv").write_text("\n".join(lines) + "\n")
    common = dict(path_column="filename", root=tmp_path / "audio", modality="audio",
                  audio_samples=4000, sample_rate=8000)
    train = ClassificationDataset.from_csv(tmp_path / "esc50.csv", label_column="category", where_not={"fold": 1},
                                           **common)
    test = ClassificationDataset.from_csv(tmp_path / "esc50.csv", label_column="category", where={"fold": [1]},
                                          train=False, num_windows=3, **common)
    assert (len(train), len(test)) == (4, 2) and train.classes == ["dog", "rain"]
    s = train[0]
    assert s["audio"].shape == (4000,) and "video" not in s
    assert test[0]["audio"].shape == (3, 4000)
    numeric = ClassificationDataset.from_csv(tmp_path / "esc50.csv", label_column="target", **common)
    assert numeric.classes == ["0", "10"]  # integer classes sort as numbers

    (tmp_path / "multi.csv").write_text("path,labels\naudio/0.wav,\"/m/a,/m/b\"\naudio/1.wav,/m/c\n")
    ml = ClassificationDataset.from_csv(tmp_path / "multi.csv", label_column="labels", label_delimiter=",",
                                        modality="audio", audio_samples=4000, sample_rate=8000)
    assert ml.multi_label and ml.classes == ["/m/a", "/m/b", "/m/c"]
    assert ml[0]["label"].tolist() == [1.0, 1.0, 0.0] and ml[1]["label"].tolist() == [0.0, 0.0, 1.0]


def test_audio_dataset_rejects_files_without_audio(tmp_path, sample_dir):
    silent = tmp_path / "silent.mp4"
    write_mp4(silent, np.zeros((10, 32, 32, 3), np.uint8), None)
    items = [LabeledItem(os.fspath(silent), 0), LabeledItem(os.fspath(sample_dir / "videos/clip_00000.mp4"), 1)]
    ds = ClassificationDataset(items, ["a", "b"], modality="audio", audio_samples=4000, sample_rate=8000)
    s = ds[0]
    assert s["skipped"] == {"no_audio_stream": 1} and int(s["label"]) == 1
    with pytest.raises(MediaError, match="no_audio_stream"):
        ClassificationDataset(items, ["a", "b"], modality="audio", strict=True, audio_samples=4000)[0]
    with pytest.raises(ValueError, match="outside"):
        ClassificationDataset([LabeledItem("x.wav", 2)], ["a", "b"])


def test_fsdd_audio_split():
    root = shared("fsdd")
    common = dict(path_column="filename", label_column="digit", root=root / "recordings", modality="audio",
                  audio_samples=8000, sample_rate=8000)
    train = ClassificationDataset.from_csv(root / "labels.csv", where={"split": "train"}, **common)
    test = ClassificationDataset.from_csv(root / "labels.csv", where={"split": "test"}, train=False,
                                          num_windows=1, **common)
    splits = [r["split"] for r in _rows(root / "labels.csv")]
    assert (len(train), len(test)) == (splits.count("train"), splits.count("test")) == (2700, 300)
    assert train.classes == [str(d) for d in range(10)]
    s = test[0]
    assert s["audio"].shape == (1, 8000) and int(s["label"]) == 0 and s["audio"].abs().max() > 0.01
    assert train[123]["audio"].shape == (8000,)


def test_audio_files_of_other_formats():
    root = shared("audio-text-pairs")
    ds = ClassificationDataset.from_csv(root / "captions.csv", path_column="filename", label_column="label",
                                        modality="audio", audio_samples=16000, sample_rate=16000, train=False,
                                        num_windows=2)
    formats = {Path(it.path).suffix for it in ds.items}
    assert {".flac", ".ogg"} <= formats
    for i in range(len(ds)):
        s = ds[i]
        assert s["audio"].shape == (2, 16000) and s["audio"].abs().max() > 1e-3, s["path"]


def _write_image(path: Path, image: np.ndarray, codec: str, pix_fmt: str) -> None:
    with av.open(os.fspath(path), "w", format="image2") as c:
        s = c.add_stream(codec)
        s.width, s.height, s.pix_fmt = image.shape[1], image.shape[0], pix_fmt
        for p in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)):
            c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_image_folder_tiles_images_in_time(tmp_path):
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / cls).mkdir()
        image = np.zeros((48, 80, 3), np.uint8)
        image[:] = colour
        _write_image(tmp_path / cls / "a.png", image, "png", "rgb24")
        _write_image(tmp_path / cls / "b.jpg", image, "mjpeg", "yuvj420p")
    (tmp_path / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ds = ClassificationDataset.from_folder(tmp_path, modality="image", size=32)
    assert ds.classes == ["blue", "red"] and len(ds) == 5
    s = ds[0]
    assert s["video"].shape == (4, 32, 32, 3)  # ImageNet: 4 frames, one temporal patch
    assert torch.equal(s["video"][0], s["video"][3])
    ev = ClassificationDataset.from_folder(tmp_path, modality="image", size=32, train=False)
    blue = ev[0]["video"]
    assert blue.shape == (1, 4, 32, 32, 3)
    assert blue[..., 2].mean() > 0.5 and blue[..., 0].mean() < -0.5  # blue stays blue, in [-1, 1]
    broken = [i for i, it in enumerate(ds.items) if it.path.endswith("broken.jpg")][0]
    assert sum(ds[broken]["skipped"].values()) >= 1
    with pytest.raises(MediaError, match="broken.jpg"):
        ev[broken]
