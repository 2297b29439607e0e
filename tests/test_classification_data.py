"""vatt.data.classification: labelled video, audio and image datasets and the layouts they are read from."""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from tests.test_decoding import write_wav
from vatt.data.classification import ClassificationDataset, LabeledItem
from vatt.data.errors import MediaError
from vatt.data.sample_data import CLASSES, write_mp4
from tests.conftest import manifest_rows


def _write_wav(path: Path, seconds: float = 1.0, rate: int = 8000, freq: float = 440.0) -> None:
    write_wav(path, 0.3 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate), rate)


CLS = dict(num_frames=4, fps=2.5, size=32)


def test_from_csv_with_split_column_and_class_file(sample_dir):
    rows = manifest_rows(sample_dir / "manifest.csv")
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
    rows = manifest_rows(sample_dir / "manifest.csv")
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
    root = shared_path("data", "fsdd")
    common = dict(path_column="filename", label_column="digit", root=root / "recordings", modality="audio",
                  audio_samples=8000, sample_rate=8000)
    train = ClassificationDataset.from_csv(root / "labels.csv", where={"split": "train"}, **common)
    test = ClassificationDataset.from_csv(root / "labels.csv", where={"split": "test"}, train=False,
                                          num_windows=1, **common)
    splits = [r["split"] for r in manifest_rows(root / "labels.csv")]
    assert (len(train), len(test)) == (splits.count("train"), splits.count("test")) == (2700, 300)
    assert train.classes == [str(d) for d in range(10)]
    s = test[0]
    assert s["audio"].shape == (1, 8000) and int(s["label"]) == 0 and s["audio"].abs().max() > 0.01
    assert train[123]["audio"].shape == (8000,)


def test_audio_files_of_other_formats():
    root = shared_path("data", "audio-text-pairs")
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
