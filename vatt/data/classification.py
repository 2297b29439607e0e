"""The classification dataset (fine-tuning, linear probes, evaluation) and the dataset layouts it reads.

`ClassificationDataset` yields dicts that `vatt.data.sampling.collate` batches: `video` [T, S, S, 3]
(train) / [V, T, S, S, 3] (eval), or `audio` [N] / [V, N]; `label` int64 scalar (single-label) or float32
multi-hot [C]; `path`, `start_s`, `index`, `skipped`. Images (`modality="image"`) come as `video` tiled
over `image_frames` frames. Its constructors read the common layouts: class folders (`from_folder`), a
labelled manifest (`from_csv`: ESC-50 folds, AudioSet multi-label segments, FSDD), and the official
UCF101 and HMDB51 split files. Randomness and skipping of bad input: `vatt.data.sampling`.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vatt.data import decoding, transforms
from vatt.data.manifest import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, format_left_out, parse_seconds,
                                read_records, row_matches, scan_reason)
from vatt.data.sampling import SkippingDataset

log = logging.getLogger(__name__)

CLASSIFICATION_FPS = 12.5  # official "32 frames, stride 2" on the 25 fps the official loaders assume


@dataclass(frozen=True)
class LabeledItem:
    """A file and its class index (single-label) or indices (multi-label), optionally a time span."""

    path: str
    label: int | tuple[int, ...]
    start_s: float | None = None
    end_s: float | None = None


def _sorted_classes(names: Iterable[str]) -> list[str]:
    names = set(names)
    # Integer class names ("0".."49") sort numerically, not as strings ("10" < "2").
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _read_class_list(classes: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(classes, (str, os.PathLike)):
        return [line.strip() for line in Path(classes).read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(classes)


class ClassificationDataset(SkippingDataset):
    """Labelled videos, audio files or images for fine-tuning, linear probes and evaluation.

    Build from a list of `LabeledItem`s and class names, or with `from_folder`, `from_csv`,
    `from_ucf101`, `from_hmdb51`.

    Video (`modality="video"`), official numbers: 32 frames at 12.5 fps (stride 2 at 25 fps).
    Training: a random window, Inception crop, flip, normalise. Evaluation: `num_windows` linearly
    spaced windows (the middle one if 1), each resized and cropped 3 times along the longer side
    (`multi_crop`, view = crop * K + window) or centre-cropped -> `video` [V, T, S, S, 3].
    Audio (`modality="audio"`): `audio_samples` at `sample_rate` from a random window (training) or
    `num_windows` windows -> [V, N]; `audio_stride` keeps every n-th sample of a window decoded at
    `sample_rate` (the official AudioSet input: 153 600 samples at stride 2 of 48 kHz, i.e.
    sample_rate=48000, audio_stride=2). A file without an audio stream is an error. Audio
    shorter than the window is repeated (`audio_pad="loop"`), as DMVR's samplers repeat a short
    sequence; FSDD digits last about 0.4 s.
    Image (`modality="image"`): train Inception crop + flip, eval resize + centre crop, then tiled
    over `image_frames` frames (ImageNet: 4) -> `video` [image_frames, S, S, 3] (eval: [1, ...]).
    """

    def __init__(
        self,
        items: Sequence[LabeledItem],
        classes: Sequence[str] | str | os.PathLike,
        *,
        modality: str = "video",
        train: bool = True,
        multi_label: bool = False,
        num_frames: int = 32,
        fps: float = CLASSIFICATION_FPS,
        size: int = transforms.IMAGE_SIZE,
        audio_samples: int = 153600,
        sample_rate: int = decoding.REF_SAMPLE_RATE,
        audio_stride: int = 1,
        num_windows: int = 4,
        multi_crop: bool = True,
        image_frames: int = 4,
        flip_prob: float = 0.5,
        audio_pad: str = "loop",
        max_pixels: int = decoding.DEFAULT_MAX_PIXELS,
        short_side: int | None = None,
        strict: bool = False,
        seed: int | None = 0,
        max_retries: int = 50,
    ):
        super().__init__(strict=strict or not train, seed=seed, max_retries=max_retries)
        if modality not in ("video", "audio", "image"):
            raise ValueError(f"modality must be 'video', 'audio' or 'image', got {modality!r}")
        if not items:
            raise ValueError("a classification dataset needs at least one item")
        self.items = list(items)
        self.classes = _read_class_list(classes)
        num_classes = len(self.classes)
        for item in self.items:
            labels = item.label if isinstance(item.label, tuple) else (item.label,)
            if any(not 0 <= lab < num_classes for lab in labels):
                raise ValueError(f"{item.path}: label {item.label} outside the {num_classes} classes")
            if isinstance(item.label, tuple) and not multi_label:
                raise ValueError(f"{item.path}: several labels {item.label}; pass multi_label=True")
        self.modality, self.train, self.multi_label = modality, train, multi_label
        self.num_frames, self.fps, self.size = num_frames, fps, size
        if audio_stride < 1:
            raise ValueError(f"audio_stride must be >= 1, got {audio_stride}")
        self.audio_samples, self.sample_rate, self.audio_stride = audio_samples, sample_rate, audio_stride
        self.num_windows, self.multi_crop, self.image_frames = num_windows, multi_crop, image_frames
        self.flip_prob, self.audio_pad = flip_prob, audio_pad
        self.max_pixels, self.short_side = max_pixels, short_side
        self.left_out: dict[str, int] = {}  # `from_folder`: files of the folders it did not take, by reason

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def _label(self, item: LabeledItem) -> torch.Tensor:
        if self.multi_label:
            target = torch.zeros(self.num_classes, dtype=torch.float32)
            target[list(item.label if isinstance(item.label, tuple) else (item.label,))] = 1.0
            return target
        return torch.tensor(item.label, dtype=torch.long)

    def _starts(self, item: LabeledItem, clip_s: float, rng: torch.Generator) -> list[float]:
        seg_start = item.start_s or 0.0
        seg_end = item.end_s if item.end_s is not None else decoding.file_duration(item.path)
        span = max(seg_end - seg_start, 0.0)
        if self.train:
            starts = decoding.sample_start(span, clip_s, rng, "random")
        elif self.num_windows == 1:
            starts = decoding.sample_start(span, clip_s, rng, "center")
        else:
            starts = decoding.sample_start(span, clip_s, rng, "linspace", self.num_windows)
        return [seg_start + s for s in starts]

    def _load_video(self, item: LabeledItem, rng: torch.Generator) -> tuple[torch.Tensor, float]:
        starts = self._starts(item, self.num_frames / self.fps, rng)
        windows = [decoding.decode_clip(item.path, s, self.num_frames, self.fps, decode_audio=False,
                                        max_pixels=self.max_pixels, short_side=self.short_side).frames
                   for s in starts]
        if self.train:
            return transforms.finetune_video_transform(windows[0], rng, self.size, flip_prob=self.flip_prob), starts[0]
        stacked = torch.stack(windows)  # [K, T, H, W, 3]
        if self.multi_crop:
            return transforms.multi_view_transform(stacked, self.size), starts[0]
        return transforms.eval_video_transform(stacked, self.size), starts[0]

    def _load_audio(self, item: LabeledItem, rng: torch.Generator) -> tuple[torch.Tensor, float]:
        starts = self._starts(item, self.audio_samples * self.audio_stride / self.sample_rate, rng)
        waves = []
        for s in starts:
            audio, _ = decoding.decode_audio(item.path, s, self.audio_samples, self.sample_rate,
                                             pad=self.audio_pad, require_audio=True, stride=self.audio_stride)
            waves.append(audio)
        return (waves[0] if self.train else torch.stack(waves)), starts[0]

    def _load_image(self, item: LabeledItem, rng: torch.Generator) -> torch.Tensor:
        # An image is a one-frame video to FFmpeg; decode_clip brings the same error reasons.
        frame = decoding.decode_clip(item.path, 0.0, num_frames=1, fps=1.0, decode_audio=False,
                                     max_pixels=self.max_pixels, short_side=self.short_side).frames
        if self.train:
            image = transforms.finetune_video_transform(frame, rng, self.size, flip_prob=self.flip_prob)
            return transforms.image_to_clip(image[0], self.image_frames)
        image = transforms.eval_video_transform(frame, self.size)
        return transforms.image_to_clip(image[0], self.image_frames)[None]

    def load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        item = self.items[index]
        sample: dict[str, Any] = {}
        if self.modality == "video":
            sample["video"], start = self._load_video(item, rng)
        elif self.modality == "audio":
            sample["audio"], start = self._load_audio(item, rng)
        else:
            sample["video"], start = self._load_image(item, rng), 0.0
        sample.update(label=self._label(item), path=item.path, start_s=float(start))
        return sample

    # --- constructors for common layouts ----------------------------------------------------------

    @classmethod
    def from_folder(cls, root: str | os.PathLike, *, modality: str = "video",
                    extensions: Sequence[str] | None = None, classes: Sequence[str] | str | None = None,
                    **kwargs: Any) -> ClassificationDataset:
        """Class-per-subfolder layout (UCF101/HMDB51/Kinetics videos, ImageNet images, audio):
        `root/<class>/.../<file>`. Classes are the sorted subfolder names unless given."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        exts = tuple(e.lower() for e in (extensions or {"video": VIDEO_EXTENSIONS, "audio": AUDIO_EXTENSIONS,
                                                        "image": IMAGE_EXTENSIONS}[modality]))
        names = _read_class_list(classes) if classes is not None else _sorted_classes(
            d.name for d in root.iterdir() if d.is_dir())
        index = {c: i for i, c in enumerate(names)}
        items = []
        left_out: Counter[str] = Counter()  # why -> files
        for name in names:
            folder = root / name
            if not folder.is_dir():
                raise FileNotFoundError(f"class folder {folder} does not exist")
            for f in sorted(folder.rglob("*")):
                if not f.is_file():
                    continue
                if f.suffix.lower() in exts:
                    items.append(LabeledItem(os.fspath(f), index[name]))
                else:
                    left_out[scan_reason(f, modality)] += 1
        if not items:
            raise ValueError(f"no {modality} files with extensions {exts} under {root}"
                             + (f" (left out: {format_left_out(left_out)})" if left_out else ""))
        dataset = cls(items, names, modality=modality, **kwargs)
        dataset.left_out = dict(left_out)
        if left_out:
            log.warning("%s: %d file(s) left out: %s", root, sum(left_out.values()), format_left_out(left_out))
        return dataset

    @classmethod
    def from_csv(cls, csv_path: str | os.PathLike, *, path_column: str = "path", label_column: str = "label",
                 root: str | os.PathLike | None = None, classes: Sequence[str] | str | None = None,
                 label_delimiter: str | None = None, where: Mapping[str, Any] | None = None,
                 where_not: Mapping[str, Any] | None = None, start_column: str | None = None,
                 end_column: str | None = None, csv_delimiter: str | None = None,
                 **kwargs: Any) -> ClassificationDataset:
        """Files and labels from a manifest with a header: CSV, TSV or JSON Lines (`read_records`).

        - Paths are relative to `root` (default: the manifest's folder) unless absolute.
        - `label_delimiter` makes it multi-label (AudioSet: "/m/09x0r,/m/05zppz").
        - `where` / `where_not` keep rows by column values (`row_matches`): ESC-50 folds
          (`where_not={"fold": 1}` to train, `where={"fold": 1}` to test), an FSDD or sample-data
          `split` column (`where={"split": "train"}`).
        - `start_column` / `end_column` give a time span per row (AudioSet segments).
        - `csv_delimiter` overrides the CSV one (tab for `.tsv`, else comma); spaces after it are ignored.
        Classes: given (list or a file with one per line), else the sorted labels of all rows
        (before filtering, so train and test subsets agree).
        """
        table = read_records(csv_path, delimiter=csv_delimiter, skip_initial_space=True)
        csv_path, records = table.path, table.rows
        base = Path(root) if root is not None else csv_path.parent
        missing = [c for c in (path_column, label_column) if c not in table.columns]
        if missing:
            raise ValueError(f"{csv_path}: no column {missing}; columns are {table.columns}")

        def labels_of(record: Mapping[str, str]) -> list[str]:
            raw = "" if record.get(label_column) is None else str(record[label_column]).strip()
            if label_delimiter is None:
                return [raw]
            return [x.strip() for x in raw.split(label_delimiter) if x.strip()]

        names = _read_class_list(classes) if classes is not None else _sorted_classes(
            lab for _, r in records for lab in labels_of(r))
        index = {c: i for i, c in enumerate(names)}
        items = []
        for line, record in records:
            if not row_matches(record, where, where_not):
                continue
            labs = labels_of(record)
            unknown = [lab for lab in labs if lab not in index]
            if unknown or not labs:
                raise ValueError(f"{csv_path}:{line}: label {unknown or labs} not among the {len(names)} classes")
            p = Path(str(record[path_column]).strip())
            p = p if p.is_absolute() else base / p
            where_txt = f"{csv_path}:{line}"
            label: int | tuple[int, ...] = tuple(index[lab] for lab in labs) if label_delimiter else index[labs[0]]
            items.append(LabeledItem(
                os.fspath(p), label,
                parse_seconds(record.get(start_column), start_column, where_txt) if start_column else None,
                parse_seconds(record.get(end_column), end_column, where_txt) if end_column else None))
        if not items:
            raise ValueError(f"{csv_path}: no rows match where={where} where_not={where_not}")
        kwargs.setdefault("multi_label", label_delimiter is not None)
        return cls(items, names, **kwargs)

    @classmethod
    def from_ucf101(cls, root: str | os.PathLike, split_file: str | os.PathLike,
                    class_index: str | os.PathLike | None = None, **kwargs: Any) -> ClassificationDataset:
        """UCF101 official split: `trainlist0k.txt` ("Class/v_Class_g08_c01.avi 1", 1-based labels) or
        `testlist0k.txt` (paths only). Classes from `classInd.txt` ("1 ApplyEyeMakeup"; looked for
        next to the split file) or else the sorted folder names in the list. Videos under `root`."""
        split_file = Path(split_file)
        if class_index is None and (split_file.parent / "classInd.txt").exists():
            class_index = split_file.parent / "classInd.txt"
        entries = []
        for n, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ValueError(f"{split_file}:{n}: expected 'path [label]', got {line!r}")
            entries.append((n, parts[0], int(parts[1]) if len(parts) == 2 else None))
        if class_index is not None:
            pairs = [ln.split() for ln in Path(class_index).read_text(encoding="utf-8").splitlines() if ln.strip()]
            names = [name for _, name in sorted(pairs, key=lambda p: int(p[0]))]
        else:
            names = _sorted_classes(p.split("/")[0] for _, p, _ in entries)
        index = {c: i for i, c in enumerate(names)}
        items = []
        for n, rel, number in entries:
            folder = rel.split("/")[0]
            if folder not in index:
                raise ValueError(f"{split_file}:{n}: class folder {folder!r} is not in the class list")
            if number is not None and number - 1 != index[folder]:
                raise ValueError(f"{split_file}:{n}: label {number} disagrees with the class of folder {folder!r} "
                                 f"({index[folder] + 1})")
            items.append(LabeledItem(os.fspath(Path(root) / rel), index[folder]))
        return cls(items, names, **kwargs)

    @classmethod
    def from_hmdb51(cls, root: str | os.PathLike, split_dir: str | os.PathLike, split: int = 1,
                    subset: str = "train", **kwargs: Any) -> ClassificationDataset:
        """HMDB51 official split: `<class>_test_split<k>.txt` files of "video.avi m" lines, m = 1 train,
        2 test, 0 unused. Videos at `root/<class>/<video>`; classes are sorted."""
        marker = {"train": "1", "test": "2"}.get(subset)
        if marker is None:
            raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
        files = sorted(Path(split_dir).glob(f"*_test_split{split}.txt"))
        if not files:
            raise FileNotFoundError(f"no *_test_split{split}.txt files in {split_dir}")
        names = sorted(f.name[: -len(f"_test_split{split}.txt")] for f in files)
        index = {c: i for i, c in enumerate(names)}
        items = []
        for f in files:
            name = f.name[: -len(f"_test_split{split}.txt")]
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise ValueError(f"{f}:{n}: expected 'video.avi 0|1|2', got {line!r}")
                if parts[1] == marker:
                    items.append(LabeledItem(os.fspath(Path(root) / name / parts[0]), index[name]))
        return cls(items, names, **kwargs)
