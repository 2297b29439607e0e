"""Embedding files: a `FileEmbeddings` (and caption embeddings) on disk as `<name>.npz` + `<name>.csv`.

`<name>.npz` holds the arrays (numpy reads it without pickle); `<name>.csv` one row per file window (path,
window, start and end time, which modalities it has, and the manifest's other columns; pandas reads it with
`pd.read_csv`) and, when there are captions, `<name>.text.csv`. See `write_embeddings` for the array names.
`vatt embed` writes them; `vatt eval retrieval --embeddings` and `vatt visualize --embeddings` read them.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vatt.atomic import atomic_group
from vatt.data.manifest import MediaEntry
from vatt.embed import Embeddings, FileEmbeddings


def _csv_path(npz: Path, suffix: str = "") -> Path:
    return npz.with_name(npz.stem + suffix + ".csv")


def embedding_arrays(files: FileEmbeddings | None = None, text: Embeddings | None = None, *,
                     text_clip: Sequence[int] | None = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The arrays `write_embeddings` stores (see there), as a dict; "meta" is a dict here."""
    if files is None and text is None:
        raise ValueError("no embeddings given")
    arrays: dict[str, Any] = {}
    meta = dict(meta or {})
    if files is not None:
        n, w = len(files), files.num_windows
        spec = files.spec
        start = files.start_s.numpy().reshape(-1)
        has_video = np.repeat(files.has_video.numpy(), w)
        has_audio = np.repeat(files.has_audio.numpy(), w)
        arrays.update(
            path=np.repeat(np.array(files.paths, dtype=str), w), clip=np.repeat(np.arange(n), w),
            window=np.tile(np.arange(w), n), start_s=start,
            video_end_s=np.where(has_video, start + (spec.video_seconds or math.nan), math.nan),
            audio_end_s=np.where(has_audio, start + (spec.audio_seconds or math.nan), math.nan),
            has_video=has_video, has_audio=has_audio,
            audio_mask=files.audio_mask.numpy().reshape(-1).astype(np.float32))
        for emb in (files.video, files.audio):
            if emb is not None:
                for key, value in emb.arrays().items():
                    arrays[f"{emb.modality}_{key}"] = value.reshape(n * w, -1).numpy()
        meta.update(num_windows=w, window_mode="center" if w == 1 else "linspace", spec=asdict(spec),
                    num_files=n, skipped_files=[str(e) for e in files.errors])
    if text is not None:
        clips = np.asarray(text_clip if text_clip is not None else [-1] * len(text), dtype=np.int64)
        if clips.shape != (len(text),):
            raise ValueError(f"text_clip must have one entry per caption ({len(text)}), got shape {clips.shape}")
        arrays.update(text=np.array(text.texts or [""] * len(text), dtype=str), text_clip=clips)
        for key, value in text.arrays().items():
            arrays[f"text_{key}"] = value.numpy()
    arrays["meta"] = meta
    return arrays


def write_embeddings(path: str | os.PathLike, files: FileEmbeddings | None = None, text: Embeddings | None = None,
                     *, text_clip: Sequence[int] | None = None, meta: Mapping[str, Any] | None = None) -> list[Path]:
    """Write embeddings as `<path>.npz` + `<path>.csv` (+ `<path>.text.csv`); returns the files written.

    Rows are file windows, clip-major (row = clip * W + window), in `<stem>.npz`:
      path (str), clip, window (int), start_s, video_end_s, audio_end_s (float64; NaN where absent),
      has_video, has_audio (bool: the modality was embedded), audio_mask (float32: 1 where real audio
      covered the window), video_features, video_va, video_vt, audio_features, audio_va (and
      video_logits / audio_logits for a classifier) `[rows, D]`, NaN rows where the file lacks the modality;
    text rows: text (str), text_clip (int: the file the caption belongs to, -1 for free text),
      text_features, text_vt;
    meta: a JSON string (input sizes, windows, model, files skipped, ...).
    String arrays are fixed-width unicode, so `np.load` needs no pickle. The `.csv` files carry the
    per-row metadata and the manifest's other columns for pandas (`pd.read_csv`); their `row` column is
    the row of the arrays. Reshape `[rows, D]` to `[files, W, D]` for the window axis.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"embeddings are written as .npz (+ .csv index); got {path}")
    arrays = embedding_arrays(files, text, text_clip=text_clip, meta=meta)
    written = [path]
    # All files change together (`vatt.atomic`): a failed write leaves the previous set, or none, in place.
    with atomic_group(what="embeddings") as group:
        if files is not None:
            w = files.num_windows
            extra_cols = list(dict.fromkeys(k for e in files.entries for k in e.fields))
            index = _csv_path(path)
            with group.open(index, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["row", "clip", "window", "path", "start_s", "video_end_s", "audio_end_s",
                                 "has_video", "has_audio", "audio_mask", "caption"] + extra_cols)
                for row in range(len(files) * w):
                    clip = row // w
                    entry = files.entries[clip] if files.entries else MediaEntry(files.paths[clip])
                    writer.writerow([row, clip, row % w, files.paths[clip]]
                                    + [_fmt(arrays[k][row]) for k in ("start_s", "video_end_s", "audio_end_s")]
                                    + [int(arrays["has_video"][row]), int(arrays["has_audio"][row]),
                                       _fmt(arrays["audio_mask"][row]), entry.captions[0] if entry.captions else ""]
                                    + [entry.fields.get(k, "") for k in extra_cols])
            written.append(index)
        if text is not None:
            index = _csv_path(path, ".text")
            with group.open(index, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["row", "clip", "text"])
                for row, (clip, caption) in enumerate(zip(arrays["text_clip"].tolist(), arrays["text"].tolist())):
                    writer.writerow([row, clip, caption])
            written.append(index)
        with group.open(path) as f:
            np.savez(f, **{**arrays, "meta": np.array(json.dumps(arrays["meta"]))})
    return written


def _fmt(x: float) -> str:
    return "" if not math.isfinite(float(x)) else f"{float(x):.6g}"


def read_embeddings(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of an embeddings `.npz` as a dict (no pickle), with "meta" parsed from JSON."""
    with np.load(Path(path), allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(out["meta"])) if "meta" in out else {}
    return out


def read_embedding_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The `.csv` index written beside an embeddings `.npz`: one dict per row (file window)."""
    index = _csv_path(Path(path))
    if not index.is_file():
        raise FileNotFoundError(f"{index}: the index written beside {path} is missing (labels come from it)")
    with open(index, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))
