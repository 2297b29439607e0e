"""Build or update an index of the windows of media files (see `vatt.index.store` for the layout).

    model = vatt.load("converted/bbs")
    report = build_index(model, ["clips/", "talk.mp4"], "my_index", model_path="converted/bbs")

Incremental: a file already in the index with the same size and modification time is not embedded
again; files that changed are embedded again, files that are gone (or no longer named by the inputs)
are dropped. Resumable: shards are committed one at a time (see `store`), so a killed run loses at most
the shard it was writing, which the next run embeds again.

Under `torchrun` (torch.distributed initialised by the caller) the files to embed are split across
ranks by position in the sorted list; each rank writes its own shards and journal, and rank 0 merges
the journals into the manifest at the end. The rows equal those of a one-process run.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from vatt.data import decoding
from vatt.data.errors import MediaError
from vatt.distributed import get_rank, get_world_size, is_distributed
from vatt.configs import DEFAULT_FPS, input_spec
from vatt.data.manifest import list_media
from vatt.index import store
from vatt.index.ann import build_ann, remove_ann
from vatt.index.windows import Segment, SegmentDataset, plan_segments
from vatt.inference import evaluating, forward_windows, model_device
from vatt.precision import resolve

Progress = Callable[[int, int], None]


@dataclass
class BuildReport:
    index_dir: str
    embedded_files: int = 0  # files embedded by this run (all ranks)
    embedded_windows: int = 0  # by this rank
    dropped_files: list[str] = field(default_factory=list)  # removed or changed since the last run
    unchanged_files: int = 0
    errors: dict[str, dict] = field(default_factory=dict)  # new undecodable files: path -> reason, message
    removed_orphans: list[str] = field(default_factory=list)  # shards of a killed run, deleted
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


def _barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def check_model(model: nn.Module) -> None:
    kind = getattr(getattr(model, "config", None), "kind", None)
    if kind not in ("tx_fac", "ut_fac"):
        raise ValueError(f"an index needs a pre-trained VATT model with common spaces (tx_fac / ut_fac), "
                         f"got a {kind or type(model).__name__} model")


def audio_to_vt(model: nn.Module, audio_va: torch.Tensor) -> torch.Tensor:
    """Audio's va embedding through the FAC head's va->vt projection (the video path's coarse step), for
    text->sound search. The head was trained on video va only; how well this works is measured, not assumed."""
    head = model.head
    with evaluating(model):
        x = audio_va.to(next(head.parameters()).device)
        return head.va_to_vt_bn(head.va_to_vt(F.relu(x))).float().cpu()


def protocol(model: nn.Module, stride_s: float | None, fps: float) -> dict:
    spec = input_spec(model, fps)
    clip_s = spec.video_seconds or spec.audio_seconds
    stride = clip_s / 2 if stride_s is None else float(stride_s)
    if not stride > 0:
        raise ValueError(f"--stride must be > 0 seconds, got {stride}")
    return {"clip_s": clip_s, "stride_s": stride, "fps": spec.fps, "num_frames": spec.num_frames,
            "size": spec.size, "audio_samples": spec.audio_samples, "sample_rate": spec.sample_rate,
            "audio_clip_s": spec.audio_seconds, "video_transform": "decoder scale to short side, resize, centre crop",
            "thumbnail": "JPEG of each window's middle frame, 96 px high"}


def _file_key(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _compact(index_dir: Path, manifest: dict, drop: set[str]) -> None:
    """Remove the rows of `drop` from the shards: rewrite each touched shard without them, then the manifest."""
    touched = {manifest["files"][p]["shard"] for p in drop if p in manifest["files"]}
    old = []
    for name in sorted(touched):
        table = store.read_shards(index_dir, [name])
        keep = pc.invert(pc.is_in(table["path"], value_set=pa.array(sorted(drop), pa.string())))
        kept = table.filter(keep)
        del manifest["shards"][name]
        old.append(name)
        if kept.num_rows:
            new = f"c-{uuid.uuid4().hex[:12]}.parquet"
            store.write_table(index_dir, new, kept)
            paths = sorted(set(kept["path"].to_pylist()))
            manifest["shards"][new] = {"rows": kept.num_rows, "files": paths}
            for p in paths:
                manifest["files"][p]["shard"] = new
    for p in drop:
        manifest["files"].pop(p, None)
        manifest["errors"].pop(p, None)
    store.write_manifest(index_dir, manifest)
    for name in old:
        (index_dir / store.SHARDS / name).unlink(missing_ok=True)


def prepare(index_dir: Path, model_info: dict, proto: dict, paths: list[str], report: BuildReport) -> dict:
    """Rank 0: bring the index to a clean committed state and drop files that are gone or changed."""
    if (index_dir / store.MANIFEST).is_file():
        manifest = store.read_manifest(index_dir)
        if manifest["model"]["fingerprint"] != model_info["fingerprint"]:
            raise ValueError(f"{index_dir} was built by another model ({manifest['model'].get('path')}, fingerprint "
                             f"{manifest['model']['fingerprint'][:12]}); use another --out or delete it")
        # indexes written before the precision was recorded were float32 (the only precision then offered)
        theirs = {k: manifest["protocol"].get(k, "fp32" if k == "precision" else None)
                  for k in ("clip_s", "stride_s", "fps", "precision")}
        ours = {k: proto[k] for k in theirs}
        if theirs != ours:
            raise ValueError(f"{index_dir} was built with {theirs}, this run asks for {ours}; "
                             f"use the same --stride, --fps and --precision, or another --out")
    else:
        if index_dir.exists() and any(index_dir.iterdir()):
            raise ValueError(f"{index_dir} exists and is not a vatt index; choose an empty or new folder")
        manifest = store.empty_manifest(model_info, proto)
    index_dir.mkdir(parents=True, exist_ok=True)
    if store.merge_journals(index_dir, manifest):
        store.write_manifest(index_dir, manifest)
        store.remove_journals(index_dir)
    report.removed_orphans = store.remove_orphans(index_dir, manifest)
    wanted = set(paths)
    drop = set()
    for table in ("files", "errors"):
        for p, entry in manifest[table].items():
            if p not in wanted or not os.path.exists(p) or _file_key(p) != {k: entry[k] for k in ("size", "mtime_ns")}:
                drop.add(p)
    report.dropped_files = sorted(drop)
    _compact(index_dir, manifest, drop)
    manifest["model"] = model_info  # the path may have moved; the fingerprint is the same
    store.write_manifest(index_dir, manifest)
    return manifest


class _Runner:
    """Runs the model over the windows of decoded segments, `batch_size` windows at a time
    (`vatt.inference.forward_windows`); a batch runs once the pending segments hold `batch_size` windows
    of either modality, video and audio together, so a segment's rows are complete when it comes back."""

    def __init__(self, model: nn.Module, batch_size: int, precision: str):
        self.model, self.batch_size, self.precision = model, batch_size, precision
        self.pending: list[dict] = []

    def add(self, item: dict) -> list[dict]:
        self.pending.append(item)
        if sum(len(i["audio_mask"]) for i in self.pending) >= self.batch_size:
            return self.flush()
        return []

    def _forward(self, modality: str, key: str) -> None:
        items = [i for i in self.pending if i[key] is not None]
        if not items:
            return
        cat = forward_windows(self.model, modality, torch.cat([i[key] for i in items]), self.batch_size,
                              self.precision)
        if modality == "audio":
            cat["vt"] = audio_to_vt(self.model, cat["va"])
        row = 0
        for i in items:
            n = i[key].shape[0]
            i["out_" + modality] = {k: v[row:row + n] for k, v in cat.items()}
            row += n

    def flush(self) -> list[dict]:
        self._forward("video", "video")
        self._forward("audio", "audio")
        done, self.pending = self.pending, []
        return done


def _rows(seg: Segment, item: dict, key: dict, proto: dict) -> list[dict]:
    rows = []
    v, a = item.get("out_video"), item.get("out_audio")
    video_s = proto["num_frames"] / proto["fps"] if proto["num_frames"] else None
    for j, (w, s) in enumerate(zip(seg.windows, seg.starts)):
        start = s / proto["fps"]
        row = {"path": seg.path, **key, "window": w, "start_s": start,
               "end_s": start + (video_s if seg.has_video else proto["audio_clip_s"]),
               "has_video": seg.has_video, "has_audio": seg.has_audio, "audio_mask": float(item["audio_mask"][j]),
               "thumbnail": item["thumbnails"][j] if item["thumbnails"] else None}
        if v is not None:
            row.update(video_va=v["va"][j].numpy(), video_vt=v["vt"][j].numpy(), video_features=v["features"][j].numpy())
        if a is not None:
            row.update(audio_va=a["va"][j].numpy(), audio_vt=a["vt"][j].numpy(), audio_features=a["features"][j].numpy())
        rows.append(row)
    return rows


def build_index(model: nn.Module, inputs: Sequence[str | os.PathLike], index_dir: str | os.PathLike, *,
                model_path: str | None = None, stride_s: float | None = None, fps: float = DEFAULT_FPS,
                batch_size: int = 8, precision: str = "fp32", num_workers: int = 0, shard_windows: int = 4096,
                progress: Progress | None = None, path_column: str | None = None, root: str | None = None,
                where: dict | None = None, ann: bool = False) -> BuildReport:
    """Index the windows of the media files named by `inputs` (files, folders, manifests, as `vatt embed`).

    stride_s: seconds between window starts (default: half the clip). where: keep manifest rows whose
    column has one of the values, as `vatt embed --where`. shard_windows: windows per shard
    (a shard holds whole files, so it may be larger). Undecodable files are recorded in the manifest's
    "errors" with their reason and skipped; they are tried again only when they change.
    ann: also build FAISS indexes for approximate search (`vatt.index.ann`), with their recall@10
    against exact search in `report.manifest["ann"]`. Without it, FAISS indexes that no longer match
    the shards are removed.
    """
    check_model(model)
    if batch_size < 1 or shard_windows < 1:
        raise ValueError(f"batch_size and shard_windows must be >= 1, got {batch_size} and {shard_windows}")
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    rank, world = get_rank(), get_world_size()
    spec = input_spec(model, fps)
    # the arithmetic of the stored vectors, "auto" decided: an update must not mix fp32 and bf16 rows
    proto = {**protocol(model, stride_s, fps), "precision": resolve(precision, model_device(model))}
    model_info = {"path": os.path.abspath(model_path) if model_path else None,
                  "fingerprint": store.model_fingerprint(model), "kind": model.config.kind}
    entries = list_media(inputs, path_column=path_column, root=root, where=where)
    paths = sorted(dict.fromkeys(os.path.abspath(e.path) for e in entries))
    report = BuildReport(index_dir=str(index_dir))

    failure = [None]
    if rank == 0:
        try:
            prepare(index_dir, model_info, proto, paths, report)
        except Exception as e:  # every rank must leave the barrier, then all raise
            failure[0] = e
    if is_distributed():
        torch.distributed.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise failure[0] if rank == 0 else RuntimeError(f"rank 0 failed: {failure[0]}")
    manifest = store.read_manifest(index_dir)
    todo = [p for p in paths if p not in manifest["files"] and p not in manifest["errors"]]
    report.unchanged_files = len(paths) - len(todo)
    mine = todo[rank::world]

    journal = store.Journal(index_dir, rank)
    errors: dict[str, dict] = {}
    keys: dict[str, dict] = {}
    segments: list[Segment] = []
    can_video, can_audio = spec.num_frames is not None, spec.audio_samples is not None
    for f, path in enumerate(mine):
        try:
            keys[path] = _file_key(path) if os.path.exists(path) else {"size": -1, "mtime_ns": -1}
            info = decoding.probe(path)
            segments += plan_segments(f, path, info, spec, proto["stride_s"], can_video, can_audio)
        except MediaError as e:
            errors[path] = {**keys[path], "reason": e.reason, "message": str(e)}

    shard_rows: list[dict] = []
    shard_files: dict[str, dict] = {}
    file_rows: dict[str, list[dict]] = {}
    new_errors = dict(errors)
    done_files = 0

    def commit(final: bool = False) -> None:
        nonlocal shard_rows, shard_files, errors
        if not shard_rows and not (final and errors):
            return
        name = None
        if shard_rows:
            name = f"r{rank:03d}-{uuid.uuid4().hex[:12]}.parquet"
            store.write_shard(index_dir, name, shard_rows)
            for entry in shard_files.values():
                entry["shard"] = name
        journal.commit(name, len(shard_rows), shard_files, errors)
        shard_rows, shard_files, errors = [], {}, {}

    def finish(items: list[dict]) -> None:
        nonlocal done_files
        for item in items:
            seg = segments[item["segment"]]
            if seg.path in new_errors:
                continue
            file_rows.setdefault(seg.path, []).extend(_rows(seg, item, keys[seg.path], proto))
            report.embedded_windows += len(seg.windows)
            if seg.part == seg.num_parts - 1:
                shard_rows.extend(file_rows.pop(seg.path))
                shard_files[seg.path] = {**keys[seg.path], "windows": len(seg.windows) + seg.windows[0]}
                done_files += 1
                if progress:
                    progress(done_files, len(mine))
                if len(shard_rows) >= shard_windows:
                    commit()

    runner = _Runner(model, batch_size, precision)
    loader = torch.utils.data.DataLoader(SegmentDataset(segments, spec), batch_size=None, num_workers=num_workers)
    for item in loader:
        seg = segments[item["segment"]]
        if item["error"] is not None:
            e = item["error"]
            new_errors[seg.path] = errors[seg.path] = {**keys[seg.path], "reason": e.reason, "message": str(e)}
            file_rows.pop(seg.path, None)
            runner.pending = [i for i in runner.pending if segments[i["segment"]].path != seg.path]
            continue
        finish(runner.add(item))
    finish(runner.flush())
    commit(final=True)

    report.errors = new_errors
    report.embedded_files = done_files
    _barrier()
    if rank == 0:
        manifest = store.read_manifest(index_dir)
        store.merge_journals(index_dir, manifest)
        store.write_manifest(index_dir, manifest)
        store.remove_journals(index_dir)
        if ann:
            build_ann(index_dir, manifest)
        elif manifest.get("ann") and manifest["ann"].get("shards") != sorted(manifest["shards"]):
            remove_ann(index_dir, manifest)
            store.write_manifest(index_dir, manifest)
        report.manifest = manifest
    _barrier()
    if rank != 0:
        report.manifest = store.read_manifest(index_dir)
    if is_distributed():
        counts = torch.tensor([report.embedded_files])
        torch.distributed.all_reduce(counts)
        report.embedded_files = int(counts)
    report.seconds = time.perf_counter() - t0
    return report
