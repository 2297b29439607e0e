"""WebDataset tar shards of encoded clips, and a dataset that streams them.

Shard layout (the WebDataset convention, so `webdataset.WebDataset(url)` reads them too): each
sample is two consecutive tar members sharing a key, `<key>.<ext>` with the encoded media bytes and
`<key>.json` with its metadata:

    {"source": original path, "line": manifest line, "offset_s": where the stored bytes start in
     the source (0 for a whole file), "start": ..., "end": ... (seconds in the stored bytes, may be
     null), "duration_s": ..., "captions": [...] or null, "context": neighbours' captions,
     "fields": the manifest's other columns (labels, split, ...)}

The bytes are the original file, or, for a row whose [start, end] is a small part of a long file
(HowTo100M), a stream-copied cut (no re-encoding) into Matroska from the key frame before `start`
to `end + tail_s`, so windows that start near `end` still have their frames. `write_shards` starts
a new shard at `max_count` samples or `max_size_mb` megabytes, whichever comes first, and writes
`index.json` with the sample count of each shard.

`ShardDataset` streams shards with plain `tarfile` (sequential reads, no index, no extra
dependencies), decoding each clip from memory. Shards are shuffled per epoch with a generator
seeded from (seed, epoch), so all ranks agree, then dealt out to the rank x worker readers; with
fewer shards than readers, every reader walks all shards and keeps its share of the samples.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from vatt.atomic import write_json
from vatt.data import decoding
from vatt.data.decoding import MediaBytes
from vatt.data.errors import MediaError
from vatt.data.manifest import ManifestRow, read_manifest, row_matches
from vatt.data.pretraining import PretrainSampleConfig, context_neighbours, make_pretrain_sample, select_captions
from vatt.data.sampling import SkipCounter, sample_seed
from vatt.data.text import WordTokenizer

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def cut_segment(path: str, start_s: float, end_s: float) -> tuple[bytes, float]:
    """Stream-copy [key frame before `start_s`, `end_s`] of a file into Matroska bytes.

    Returns the bytes and `offset_s`, the source time (on `decoding`'s clock: seconds from the
    container start) at which the cut's clock starts, so source time t is t - offset_s in the cut.
    Matroska rather than the source container: it takes any codec, and stream copy keeps quality.
    """
    with av.open(path, metadata_errors="ignore") as src:
        origin = src.start_time / av.time_base if src.start_time is not None else 0.0
        video = next((s for s in src.streams.video), None)
        streams = [s for s in src.streams if s.type in ("video", "audio")]
        if video is None:
            raise MediaError(path, "no_video_stream", "cannot cut a file without video")
        buf = io.BytesIO()
        first_t: float | None = None
        with av.open(buf, "w", format="matroska") as dst:
            out = {s.index: dst.add_stream_from_template(s) for s in streams}
            if start_s > 0:
                src.seek(int(math.floor((origin + start_s) / video.time_base)), stream=video, backward=True)
            started = False
            finished: set[int] = set()
            for packet in src.demux(streams):
                if packet.dts is None or packet.pts is None:
                    continue  # flush packets
                t = float(packet.pts * packet.time_base) - origin
                if not started:
                    # Start at a video key frame so the cut decodes from its first packet.
                    if packet.stream is not video or not packet.is_keyframe:
                        continue
                    started = True
                if t > end_s:
                    finished.add(packet.stream.index)
                    if len(finished) == len(streams):
                        break
                    continue
                first_t = t if first_t is None else min(first_t, t)
                packet.stream = out[packet.stream.index]
                dst.mux(packet)
        if first_t is None:
            raise MediaError(path, "too_short", f"no key frame between {start_s:.3f} s and {end_s:.3f} s")
    return buf.getvalue(), first_t


@dataclass
class ShardReport:
    """What `write_shards` wrote and what it left out."""

    shards: list[Path] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    num_samples: int = 0
    num_bytes: int = 0
    num_cut: int = 0
    skipped: SkipCounter = field(default_factory=SkipCounter)
    seconds: float = 0.0


class _ShardWriter:
    def __init__(self, out_dir: Path, prefix: str, max_count: int, max_bytes: int):
        self.out_dir, self.prefix = out_dir, prefix
        self.max_count, self.max_bytes = max_count, max_bytes
        self.tar: tarfile.TarFile | None = None
        self.paths: list[Path] = []
        self.counts: list[int] = []
        self.count = 0
        self.size = 0

    def _open_next(self) -> None:
        self.close()
        path = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.paths.append(path)
        self.counts.append(0)
        self.count = self.size = 0

    def add(self, key: str, files: Mapping[str, bytes]) -> None:
        size = sum(len(b) + 1024 for b in files.values())  # + tar header and padding
        if self.tar is None or self.count >= self.max_count or (self.count > 0 and self.size + size > self.max_bytes):
            self._open_next()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            # Fixed owner, mode and time: the same manifest gives byte-identical shards.
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.size += size
        self.counts[-1] += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def write_shards(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_count: int = 1000,
    max_size_mb: float = 1024.0,
    cut_segments: bool = True,
    tail_s: float = 3.2,
    max_context_sentences: int = 4,
    where: Mapping[str, Any] | None = None,
    where_not: Mapping[str, Any] | None = None,
    prefix: str = "shard",
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    vocab_size: int = 2**16,
) -> ShardReport:
    """Pack a pre-training manifest (see `vatt.data.manifest.read_manifest`) into tar shards under `out_dir`.

    Each file is probed first; one that cannot be used (missing, empty, corrupt, no video) is left
    out and counted in the report by reason (or raises with `strict=True`). Captions are stored as
    they are and checked when the sample is loaded, as `PretrainDataset` does. A row is stored as a
    cut (`cut_segment`) when `cut_segments` and its [start, end + tail_s] covers less than 3/4 of
    the file. `progress(done, total)` is called after each row. Beside the shards, `vocab.txt` holds the
    `vocab_size` most frequent words of the captions (training from the shards reads it when no
    vocabulary is named; 0 writes none).
    """
    if max_count < 1 or max_size_mb <= 0:
        raise ValueError(f"need max_count >= 1 and max_size_mb > 0, got {max_count} and {max_size_mb}")
    t0 = time.perf_counter()
    manifest = Path(manifest)
    rows = [r for r in read_manifest(manifest) if row_matches(r.fields, where, where_not)]
    neighbours = context_neighbours(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, prefix, max_count, int(max_size_mb * 1024 * 1024))
    report = ShardReport()
    try:
        for i, row in enumerate(rows):
            try:
                files, meta, was_cut = _pack_row(row, rows, neighbours[i], cut_segments, tail_s, max_context_sentences)
            except MediaError as err:
                if strict:
                    raise
                report.skipped.add(err.reason)
                log.warning("not sharded: %s (manifest line %d)", err, row.line)
            else:
                files["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
                writer.add(f"{i:09d}", files)
                report.num_samples += 1
                report.num_cut += was_cut
            if progress:
                progress(i + 1, len(rows))
    finally:
        writer.close()
    report.shards, report.counts = writer.paths, writer.counts
    report.num_bytes = sum(p.stat().st_size for p in writer.paths)
    index = {"shards": [{"name": p.name, "count": c} for p, c in zip(writer.paths, writer.counts)],
             "num_samples": report.num_samples, "manifest": os.fspath(manifest)}
    write_json(out / INDEX_FILE, index, indent=1)
    if vocab_size:
        WordTokenizer.build((c for r in rows for c in (r.captions or []) if isinstance(c, str)),
                            max_size=vocab_size).save(out / "vocab.txt")
    report.seconds = time.perf_counter() - t0
    return report


def _pack_row(row: ManifestRow, rows: Sequence[ManifestRow], neighbours: Sequence[int], cut_segments: bool,
              tail_s: float, max_context_sentences: int) -> tuple[dict[str, bytes], dict[str, Any], bool]:
    info = decoding.probe(row.video)
    if not info.has_video:
        raise MediaError(row.video, "no_video_stream", f"{info.format_name} file without a video stream")
    duration = info.duration_s
    start, end = row.start_s, row.end_s
    ext = Path(row.video).suffix.lstrip(".").lower() or "bin"
    offset, was_cut = 0.0, False
    wants_cut = (cut_segments and (start is not None or end is not None) and duration
                 and ((end if end is not None else duration) + tail_s - (start or 0.0)) < 0.75 * duration)
    if wants_cut:
        data, offset = cut_segment(row.video, start or 0.0, (end if end is not None else duration) + tail_s)
        ext, was_cut = "mkv", True
    else:
        try:
            data = Path(row.video).read_bytes()
        except OSError as e:
            raise MediaError(row.video, "unreadable", e.strerror or str(e)) from None
    # Neighbours' captions, nearest first, enough to fill L even if some turn out unusable.
    context: list[Any] = []
    for j in neighbours:
        if len(context) >= 2 * max_context_sentences:
            break
        context += rows[j].captions or []
    meta = {
        "source": row.video,
        "line": row.line,
        "offset_s": offset,
        "start": None if start is None else max(start - offset, 0.0),
        "end": None if end is None else end - offset,
        "duration_s": None if duration is None else (duration - offset),
        "captions": row.captions,
        "context": context[: 2 * max_context_sentences],
        "fields": row.fields,
    }
    return {ext: data}, meta, was_cut


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def list_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a folder (its `*.tar`, sorted), one tar path, or a list of paths."""
    if isinstance(shards, (str, os.PathLike)):
        p = Path(shards)
        if p.is_dir():
            found = sorted(os.fspath(x) for x in p.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in {p}")
            return found
        return [os.fspath(p)]
    return [os.fspath(x) for x in shards]


def iter_tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a WebDataset tar, read sequentially.

    The key is the member name up to the first dot of its basename (WebDataset's rule); a sample's
    members are consecutive. A damaged tar raises MediaError(path, "corrupt") where it breaks.
    """
    current: str | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{directory}/{stem}" if directory else stem
                if key != current and current is not None:
                    yield current, files
                    files = {}
                current = key
                handle = tar.extractfile(member)
                files[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise MediaError(path, "missing_file", "no such shard") from None
        raise MediaError(path, "corrupt", f"damaged tar shard ({e})") from None
    if current is not None:
        yield current, files


_MEDIA_EXTENSIONS = ("mp4", "mkv", "webm", "mov", "m4v", "avi", "mpg", "mpeg", "flv", "ogv", "3gp", "bin")


def _split_for_reader(shards: list[str], part: int, num_parts: int) -> tuple[list[str], int, int]:
    """This reader's shards and its sample stride: shards dealt round-robin when there are enough,
    else every shard with every num_parts-th sample."""
    if len(shards) >= num_parts:
        return shards[part::num_parts], 0, 1
    return shards, part, num_parts


class ShardDataset(IterableDataset):
    """Pre-training samples streamed from shards written by `write_shards` (same dicts as
    `PretrainDataset`; keyword arguments other than those below are `PretrainSampleConfig` fields).

    Epochs: each `__iter__` is one pass; the epoch number is the one given to `set_epoch`, else
    counts passes in this process (so persistent workers advance on their own). Training shuffles
    shard order per epoch and samples within a reader through a `shuffle_buffer`. A sample that
    fails is dropped, and the count rides on the next sample's `skipped` (so `collate` and
    `SkipCounter` see it); `strict=True` (and evaluation) raises instead.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: WordTokenizer, *,
                 shuffle_buffer: int = 256, seed: int = 0, strict: bool = False, rank: int | None = None,
                 world_size: int | None = None, **config: Any):
        self.shards = list_shards(shards)
        self.tokenizer = tokenizer
        self.config = PretrainSampleConfig(**config)
        self.shuffle_buffer = shuffle_buffer if self.config.train else 0
        self.seed = seed
        self.strict = strict or not self.config.train
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_set = epoch, True

    @property
    def num_samples(self) -> int | None:
        """Samples in all shards, from the shards' `index.json` when there is one, else None."""
        folders = {Path(s).parent for s in self.shards}
        names = {Path(s).name for s in self.shards}
        total = 0
        for folder in folders:
            index = folder / INDEX_FILE
            if not index.exists():
                return None
            entries = json.loads(index.read_text(encoding="utf-8"))["shards"]
            total += sum(e["count"] for e in entries if e["name"] in names)
        return total

    def _reader(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            initialized = dist.is_available() and dist.is_initialized()
            world = world if world is not None else (dist.get_world_size() if initialized else 1)
            rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return rank * num_workers + worker_id, world * num_workers

    def _samples(self, shards: list[str], offset: int, stride: int, skipped: Counter) -> Iterator[tuple[str, str, dict]]:
        n = 0
        for shard in shards:
            try:
                for key, files in iter_tar_samples(shard):
                    if n % stride == offset:
                        yield shard, key, files
                    n += 1
            except MediaError as err:
                if self.strict:
                    raise
                skipped[err.reason] += 1
                log.warning("skipping the rest of shard: %s", err)

    def _decode(self, shard: str, key: str, files: Mapping[str, bytes], rng: torch.Generator) -> dict[str, Any]:
        name = f"{shard}:{key}"
        if "json" not in files:
            raise MediaError(name, "corrupt", "sample has no .json metadata")
        try:
            meta = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MediaError(name, "corrupt", f"unreadable .json metadata ({e})") from None
        media = [ext for ext in files if ext != "json"]
        media = [ext for ext in media if ext in _MEDIA_EXTENSIONS] or media
        if not media:
            raise MediaError(name, "missing_file", "sample has no media member")
        ext = media[0]
        captions = select_captions(meta.get("captions"), meta.get("context") or [], self.config, rng, name,
                                   f"manifest line {meta.get('line')}")
        seg_start = meta.get("start") or 0.0
        seg_end = meta.get("end")
        if seg_end is None:
            seg_end = meta.get("duration_s") or 0.0
        # Decoded from memory (PyAV reads a file-like object): no temporary file to leave behind.
        media_bytes = MediaBytes(f"{name}.{ext}", files[ext])
        try:
            sample = make_pretrain_sample(media_bytes, seg_start, seg_end, captions, self.tokenizer, self.config, rng)
        except MediaError as err:
            raise MediaError(name, err.reason, err.detail) from None
        sample["path"] = meta.get("source", name)
        sample["start_s"] = sample["start_s"] + float(meta.get("offset_s") or 0.0)  # on the source's clock
        sample["key"] = name
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        if not self._epoch_set:
            self.epoch += 1  # the next pass in this process is the next epoch
        self._epoch_set = False
        part, num_parts = self._reader()
        shards = list(self.shards)
        if self.config.train:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        mine, offset, stride = _split_for_reader(shards, part, num_parts)
        skipped: Counter[str] = Counter()
        buffer_rng = torch.Generator().manual_seed(sample_seed(self.seed, epoch, part, 0))
        buffer: list[tuple[str, str, dict]] = []
        count = 0

        def emit(item: tuple[str, str, dict]) -> dict[str, Any] | None:
            nonlocal count
            rng = torch.Generator().manual_seed(sample_seed(self.seed, epoch, part, 1, count))
            count += 1
            try:
                sample = self._decode(*item, rng)
            except MediaError as err:
                if self.strict:
                    raise
                skipped[err.reason] += 1
                log.warning("skipping %s", err)
                return None
            sample["skipped"] = dict(skipped)
            skipped.clear()
            return sample

        for item in self._samples(mine, offset, stride, skipped):
            if self.shuffle_buffer > 1:
                buffer.append(item)
                if len(buffer) < self.shuffle_buffer:
                    continue
                j = int(torch.randint(0, len(buffer), (), generator=buffer_rng).item())
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                item = buffer.pop()
            sample = emit(item)
            if sample is not None:
                yield sample
        while buffer:
            j = int(torch.randint(0, len(buffer), (), generator=buffer_rng).item())
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            sample = emit(buffer.pop())
            if sample is not None:
                yield sample
        if skipped:
            log.warning("%d samples skipped at the end of a pass with no sample left to report them: %s",
                        sum(skipped.values()), dict(skipped))
