"""How an index lies on disk: Parquet shards, per-rank journals and a JSON manifest.

    INDEX/
      manifest.json             what the index is (format below); written last, atomically
      shards/r000-<id>.parquet  one row per window (r000: written by rank 0; c-<id>: rewritten without
                                dropped files); written to a hidden temporary beside it and renamed
      journal-r000.json         shards a run has committed that manifest.json does not list yet

A shard holds whole files (the windows of one file never span two shards). A run commits each shard
by rewriting its rank's journal (atomically) after the shard's rename; at the start and at the end of a
run the journals are merged into manifest.json. So the state of the index is always manifest.json plus
the journals: a shard that is on disk but in neither (a run killed between the rename and the journal)
is deleted at the next start, and its files are embedded again: never lost, never twice.

Columns of a shard (Apache Parquet, read with pyarrow, pandas, polars, DuckDB, ...):

    path           string   absolute path of the media file
    size, mtime_ns int64    the file's size and modification time when it was embedded
    window         int32    window number in the file (0, 1, ...)
    start_s, end_s float64  the window's time range, seconds from the start of the file
    has_video      bool     the window has video embeddings (False for audio-only files)
    has_audio      bool     the file has an audio stream (audio embeddings present)
    audio_mask     float32  1 where real audio covered the window
    video_va       list<float32>[d_va]   video in the video-audio space (FAC `video.toaud`); null if no video
    video_vt       list<float32>[d_vt]   video in the video-text space (`video.totxt`)
    video_features list<float32>[D_v]    the video backbone's pooled AGG feature
    audio_va       list<float32>[d_va]   audio in the video-audio space (`audio.tovid`); null if no audio
    audio_vt       list<float32>[d_vt]   audio_va through the FAC head's va->vt projection (for text->sound)
    audio_features list<float32>[D_a]    the audio backbone's pooled feature
    thumbnail      binary   JPEG of the window's middle frame (null for audio-only files)

Embeddings are as the model gives them (not L2-normalised). manifest.json:

    {"format": "vatt-index", "version": 1,
     "model": {"path", "fingerprint" (sha256 of config and weights), "kind"},
     "protocol": {"clip_s", "stride_s", "fps", "num_frames", "size", "audio_samples", "sample_rate",
                  "precision" ("fp32" | "bf16"; absent in indexes written before it was recorded: fp32), ...},
     "shards": {"r000-000001.parquet": {"rows": n, "files": [paths]}},
     "files": {path: {"size", "mtime_ns", "shard", "windows"}},
     "errors": {path: {"size", "mtime_ns", "reason", "message"}},   # files that could not be decoded
     "counts": {"files", "windows", "video_windows", "audio_windows", "errors"},
     "ann": null or {"kind": "faiss", ...}}
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vatt.atomic import write_bytes, write_json

FORMAT = "vatt-index"
VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
EMBEDDING_COLUMNS = ("video_va", "video_vt", "video_features", "audio_va", "audio_vt", "audio_features")
_JOURNAL = re.compile(r"^journal-r(\d+)\.json$")


def _write_json(path: Path, record: Any) -> None:
    # Through `vatt.atomic`: a failed write raises `WriteFailed` and leaves the previous file, never a partial one.
    write_json(path, record, what="index", indent=1, sort_keys=True)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's config (JSON) and every tensor of its state dict (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    cfg = asdict(cfg) if is_dataclass(cfg) else repr(cfg)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def empty_manifest(model_info: dict, protocol: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "model": model_info, "protocol": protocol,
            "shards": {}, "files": {}, "errors": {}, "counts": {}, "ann": None}


def read_manifest(index_dir: Path) -> dict:
    path = Path(index_dir) / MANIFEST
    if not Path(index_dir).is_dir():
        raise FileNotFoundError(f"no index at {index_dir} (build one with `vatt index MODEL INPUTS --out {index_dir}`)")
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir} is not a vatt index: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vatt index manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: index format version {manifest.get('version')}, this vatt reads {VERSION}")
    return manifest


def update_counts(manifest: dict, index_dir: Path) -> None:
    rows = sum(s["rows"] for s in manifest["shards"].values())
    video = audio = 0
    for name in manifest["shards"]:
        t = pq.read_table(Path(index_dir) / SHARDS / name, columns=["has_video", "has_audio"])
        video += int(np.asarray(t["has_video"]).sum())
        audio += int(np.asarray(t["has_audio"]).sum())
    manifest["counts"] = {"files": len(manifest["files"]), "windows": rows, "video_windows": video,
                          "audio_windows": audio, "errors": len(manifest["errors"])}


def write_manifest(index_dir: Path, manifest: dict) -> None:
    update_counts(manifest, index_dir)
    _write_json(Path(index_dir) / MANIFEST, manifest)


# --------------------------------------------------------------------------------------------------
# Journals: each rank's commits since the manifest was last written
# --------------------------------------------------------------------------------------------------

def journal_path(index_dir: Path, rank: int) -> Path:
    return Path(index_dir) / f"journal-r{rank:03d}.json"


class Journal:
    """One rank's committed shards and bad files; rewritten atomically at each commit."""

    def __init__(self, index_dir: Path, rank: int):
        self.path = journal_path(index_dir, rank)
        self.record = {"shards": {}, "files": {}, "errors": {}}

    def commit(self, shard: str | None, rows: int, files: dict[str, dict], errors: dict[str, dict]) -> None:
        if shard is not None:
            self.record["shards"][shard] = {"rows": rows, "files": sorted(files)}
        self.record["files"].update(files)
        self.record["errors"].update(errors)
        _write_json(self.path, self.record)


def merge_journals(index_dir: Path, manifest: dict) -> bool:
    """Fold every journal into `manifest` (in memory); True if there was any. The caller writes the manifest
    and then deletes the journals (`remove_journals`): a crash in between merges the same records again,
    which changes nothing."""
    found = False
    for path in sorted(Path(index_dir).glob("journal-r*.json")):
        if not _JOURNAL.match(path.name):
            continue
        found = True
        record = json.loads(path.read_text())
        for path_, entry in record["files"].items():
            manifest["errors"].pop(path_, None)
            manifest["files"][path_] = entry
        for path_, entry in record["errors"].items():
            manifest["files"].pop(path_, None)
            manifest["errors"][path_] = entry
        manifest["shards"].update(record["shards"])
    return found


def remove_journals(index_dir: Path) -> None:
    for path in Path(index_dir).glob("journal-r*.json"):
        if _JOURNAL.match(path.name):
            path.unlink()


def remove_orphans(index_dir: Path, manifest: dict) -> list[str]:
    """Delete shards and temporary files the manifest does not list (left by a killed run)."""
    removed = []
    shard_dir = Path(index_dir) / SHARDS
    for path in sorted(shard_dir.iterdir()) if shard_dir.is_dir() else []:
        if path.name not in manifest["shards"]:
            path.unlink()
            removed.append(path.name)
    # Temporaries of a killed writer: `.tmp-*` of vatt.atomic (beside the manifest, journals and shards),
    # `.*.tmp` of the FAISS build.
    for path in [*Path(index_dir).glob(".*.tmp"), *Path(index_dir).glob(".tmp-*")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


# --------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------

def _vector_column(rows: list[dict], key: str) -> pa.Array:
    dim = next((len(r[key]) for r in rows if r.get(key) is not None), None)
    if dim is None:
        return pa.nulls(len(rows), pa.list_(pa.float32()))
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    valid = np.zeros(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        if r.get(key) is not None:
            flat[i] = r[key]
            valid[i] = True
    values = pa.array(flat.reshape(-1), type=pa.float32())
    arr = pa.FixedSizeListArray.from_arrays(values, dim)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~valid)) if not valid.all() else arr


def write_shard(index_dir: Path, name: str, rows: list[dict]) -> None:
    """Write window rows (dicts with the columns of the module doc) as `shards/<name>`, atomically."""
    columns = {
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "size": pa.array([r["size"] for r in rows], pa.int64()),
        "mtime_ns": pa.array([r["mtime_ns"] for r in rows], pa.int64()),
        "window": pa.array([r["window"] for r in rows], pa.int32()),
        "start_s": pa.array([r["start_s"] for r in rows], pa.float64()),
        "end_s": pa.array([r["end_s"] for r in rows], pa.float64()),
        "has_video": pa.array([r["has_video"] for r in rows], pa.bool_()),
        "has_audio": pa.array([r["has_audio"] for r in rows], pa.bool_()),
        "audio_mask": pa.array([r["audio_mask"] for r in rows], pa.float32()),
    }
    for key in EMBEDDING_COLUMNS:
        columns[key] = _vector_column(rows, key)
    columns["thumbnail"] = pa.array([r.get("thumbnail") for r in rows], pa.binary())
    write_table(index_dir, name, pa.table(columns))


def write_table(index_dir: Path, name: str, table: pa.Table) -> None:
    """Write `table` as `shards/<name>` through `vatt.atomic` (hidden temporary beside it, then a rename)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(Path(index_dir) / SHARDS / name, sink.getvalue().to_pybytes(), what="index shard")


def read_shards(index_dir: Path, names, columns: list[str] | None = None) -> pa.Table | None:
    tables = [pq.read_table(Path(index_dir) / SHARDS / n, columns=columns) for n in names]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def vectors(table: pa.Table, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as float32 `[rows, D]` (zeros where null) and its validity mask `[rows]`."""
    col = table[key].combine_chunks()
    valid = ~np.asarray(col.is_null())
    if not valid.any():
        return np.zeros((len(col), 0), np.float32), valid
    dim = len(col[int(np.argmax(valid))].as_py())
    out = np.zeros((len(col), dim), np.float32)
    values = col.filter(pa.array(valid))
    out[valid] = np.asarray(values.flatten(), dtype=np.float32).reshape(-1, dim)
    return out, valid
