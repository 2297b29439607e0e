"""The labelled training and validation sets a fine-tuning config names (`vatt.data.classification.ClassificationDataset`).

Training samples: one random window per clip, Inception crop + flip (video, images), tiled over
`image_frames` frames (images), raw waveform (audio). Validation samples: every view of a clip,
`[V, ...]`: `num_windows_test` linearly spaced windows, times 3 crops along the longer side for video
with `multi_crop` (the official 4 x 3 = 12 views), one centre-cropped view for images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vatt.configs import input_spec
from vatt.data.classification import ClassificationDataset
from vatt.finetune.config import ConfigError, DataConfig


@dataclass(frozen=True)
class InputSizes:
    modality: str  # video, audio or image
    num_frames: int | None
    size: int | None
    fps: float
    audio_samples: int | None
    sample_rate: int | None
    image_frames: int | None
    audio_stride: int = 1


def resolve_modality(data: DataConfig, model_config: Any) -> str:
    own = "video" if model_config.kind == "video_classifier" else "audio"
    if data.modality == "auto":
        return own
    needs = "audio" if data.modality == "audio" else "video"
    if needs != own:
        raise ConfigError(f"data.modality={data.modality} needs a {needs} classifier; model.preset is a {own} one")
    return data.modality


def input_sizes(data: DataConfig, model_config: Any) -> InputSizes:
    """Clip sizes: the data section's, where 0 means what the model was made for (`vatt.configs.input_spec`)."""
    modality = resolve_modality(data, model_config)
    spec = input_spec(model_config, data.fps, num_frames=data.num_frames, size=data.frame_size,
                      audio_samples=data.audio_samples, sample_rate=data.sample_rate)
    if modality == "audio":
        return InputSizes("audio", None, None, data.fps, spec.audio_samples, spec.sample_rate, None, data.audio_stride)
    image_frames = data.image_frames or model_config.video.temporal_patch_size
    return InputSizes(modality, spec.num_frames, spec.size, data.fps, None, None,
                      image_frames if modality == "image" else None)


def _kwargs(sizes: InputSizes, data: DataConfig, train: bool, seed: int) -> dict[str, Any]:
    kw: dict[str, Any] = dict(modality=sizes.modality, train=train, seed=seed, flip_prob=data.flip_prob,
                              num_windows=data.num_windows_test, multi_crop=data.multi_crop)
    if sizes.modality == "audio":
        kw.update(audio_samples=sizes.audio_samples, sample_rate=sizes.sample_rate, audio_stride=sizes.audio_stride)
    else:
        kw.update(num_frames=sizes.num_frames, fps=sizes.fps, size=sizes.size)
        if sizes.modality == "image":
            kw.update(image_frames=sizes.image_frames)
    return kw


def build_datasets(data: DataConfig, model_config: Any, seed: int = 0):
    """(train dataset, validation dataset or None, class names, multi_label) for the data section."""
    if not data.train:
        raise ConfigError("data.train is empty: name the training data (a CSV, a class folder or a split file)")
    sizes = input_sizes(data, model_config)
    train_kw, val_kw = _kwargs(sizes, data, True, seed), _kwargs(sizes, data, False, seed)
    classes = data.classes or None
    multi_label = bool(data.label_delimiter)
    if data.format == "csv":
        common = dict(path_column=data.path_column, label_column=data.label_column, root=data.root or None,
                      label_delimiter=data.label_delimiter or None)
        train = ClassificationDataset.from_csv(data.train, classes=classes, where=data.train_where or None,
                                               where_not=data.train_where_not or None, **common, **train_kw)
        val = None
        if data.val or data.val_where or data.val_where_not:
            val = ClassificationDataset.from_csv(data.val or data.train, classes=train.classes,
                                                 where=data.val_where or None, where_not=data.val_where_not or None,
                                                 **common, **val_kw)
    elif data.format == "folder":
        if multi_label:
            raise ConfigError("data.label_delimiter (multi-label) needs data.format=csv")
        train = ClassificationDataset.from_folder(data.train, classes=classes, **train_kw)
        val = ClassificationDataset.from_folder(data.val, classes=train.classes, **val_kw) if data.val else None
    elif data.format == "ucf101":
        root = data.root or str(Path(data.train).parent)
        train = ClassificationDataset.from_ucf101(root, data.train, **train_kw)
        val = ClassificationDataset.from_ucf101(root, data.val, **val_kw) if data.val else None
    else:  # hmdb51
        split = dict(split_dir=data.train, split=data.hmdb_split)
        train = ClassificationDataset.from_hmdb51(data.root, subset="train", **split, **train_kw)
        val = ClassificationDataset.from_hmdb51(data.root, subset="test", **split, **val_kw)
    if val is not None and val.classes != train.classes:
        raise ConfigError(f"the validation data has other classes than the training data "
                          f"({len(val.classes)} vs {len(train.classes)})")
    return train, val, list(train.classes), multi_label
