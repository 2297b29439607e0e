"""Map-style datasets over ordinary media files: pre-training manifests, classification, images.

Every dataset here returns a dict per sample and works with `torch.utils.data.DataLoader` workers:

- **Reproducible randomness.** Sample `i` of epoch `e` draws its window, crop, flip, jitter and noise
  from a `torch.Generator` seeded from `(seed, e, i)`, so it is the same whichever worker loads it.
  An item key may be an index `i` (epoch = `set_epoch`'s value) or a pair `(e, i)`; `EpochSampler`
  yields pairs, which keeps epochs distinct even with `persistent_workers=True` (workers hold copies
  of the dataset, so a `set_epoch` in the main process would not reach them). With `seed=None` the
  generator is seeded from the process's global torch RNG instead, for trainers that seed it per item.
- **Ranks.** `EpochSampler` also splits the indices across `torch.distributed` ranks.
- **Bad input.** In training (`strict=False`), a sample that raises `MediaError` (missing, empty,
  corrupt or truncated file, no video stream, too large, too short, unusable caption) is skipped:
  the reason is logged and counted, and a deterministic random other sample takes its place, so a
  batch is always full. The sample that stands in carries `skipped` (reason -> count of samples
  skipped before it), `collate` sums them per batch, and a `SkipCounter` sums batches for the
  trainer's per-epoch log. Counting through the samples works across worker processes without
  shared state. With `strict=True`, and always in evaluation, the `MediaError` (which names the file
  and the reason) is raised instead.

Sample dicts (`collate` stacks tensors, turns numbers into tensors and keeps strings as lists):

- `PretrainDataset`: `video` float32 [T, S, S, 3] in [-1, 1] (evaluation with `num_windows` > 1:
  [V, T, S, S, 3]), `audio` float32 [N] (or [V, N]), `text` int64 [L, 16] with L =
  `max_context_sentences + 1`, `audio_mask` / `text_mask` float32 scalars, `caption` (the row's
  first caption, "" if none), `path`, `start_s`, `index`, `skipped`. The model's text input is
  `text.reshape(B * L, 16)` (clip-major, as the official loss expects).
- `ClassificationDataset`: `video` [T, S, S, 3] (train) / [V, T, S, S, 3] (eval), or `audio` [N] /
  [V, N]; `label` int64 scalar (single-label) or float32 multi-hot [C]; `path`, `start_s`, `index`,
  `skipped`. Images (`modality="image"`) come as `video` tiled over `image_frames` frames.
- `vatt.data.shards.ShardDataset` (streaming) yields the `PretrainDataset` dicts with `key`
  ("shard:key") in place of `index`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vatt.data import decoding, transforms
from vatt.data.errors import MediaError
from vatt.data.text import WordTokenizer, split_words

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp",
                    ".gif")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

MAX_CAPTION_CHARS = 1000  # longer "captions" are broken rows (a transcript or a file pasted into a cell)
CLASSIFICATION_FPS = 12.5  # official "32 frames, stride 2" on the 25 fps the official loaders assume


# --------------------------------------------------------------------------------------------------
# Skips, seeds, sampling, collation
# --------------------------------------------------------------------------------------------------

class SkipCounter:
    """Skipped samples counted by reason, summed over batches (`update(batch)`) for a per-epoch log."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: Counter[str] = Counter(counts or {})

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def update(self, skipped: Mapping[str, Any]) -> None:
        """Add a batch's counts: a collated batch (its `skipped` entry) or a reason -> count mapping."""
        if "skipped" in skipped and isinstance(skipped["skipped"], Mapping):
            skipped = skipped["skipped"]
        for reason, n in skipped.items():
            self.counts[reason] += int(n)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def reset(self) -> dict[str, int]:
        """Return the counts so far and start again from zero (call at the end of each epoch)."""
        out = self.as_dict()
        self.counts.clear()
        return out

    def __str__(self) -> str:
        if not self.counts:
            return "no samples skipped"
        return f"{self.total} samples skipped: " + ", ".join(f"{r}={n}" for r, n in self.as_dict().items())

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


def sample_seed(seed: int | None, *parts: int) -> int:
    """A 63-bit seed from `(seed, *parts)`; `seed=None` draws the base from the global torch RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    state = np.random.SeedSequence([int(seed), *(int(p) for p in parts)]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> np.uint64(1))


def sample_generator(seed: int | None, epoch: int, index: int, attempt: int = 0) -> torch.Generator:
    """The generator sample `index` of `epoch` draws from (its `attempt`-th try after skips)."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index, attempt))


def _parse_key(key: Any, default_epoch: int) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"a dataset key is an index or an (epoch, index) pair, got {key!r}")
        return int(key[0]), int(key[1])
    return default_epoch, int(key)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields `(epoch, index)` keys: this rank's share of a (shuffled) epoch.

    Like `DistributedSampler`: the permutation depends on `(seed, epoch)` only, so all ranks agree,
    and rank r takes every world_size-th index from r. Without `drop_last` the epoch is padded by
    repeating indices so every rank gets the same number. Call `set_epoch` before each epoch.
    """

    def __init__(self, num_items: int, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False):
        if rank is None or world_size is None:
            import torch.distributed as dist

            initialized = dist.is_available() and dist.is_initialized()
            world_size = world_size if world_size is not None else (dist.get_world_size() if initialized else 1)
            rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_items, self.shuffle, self.seed = num_items, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        if drop_last:
            self.num_per_rank = num_items // world_size
        else:
            self.num_per_rank = math.ceil(num_items / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        total = self.num_per_rank * self.world_size
        if total > len(order) and order:
            order = (order * math.ceil(total / len(order)))[:total]
        order = order[:total]
        for i in order[self.rank::self.world_size]:
            yield self.epoch, i


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts: tensors -> [B, ...], numbers -> tensors [B], strings -> lists,
    `skipped` -> one reason -> count dict for the batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if key == "skipped":
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            out[key] = dict(total)
        elif torch.is_tensor(first):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack '{key}': samples have shapes {sorted(shapes)}")
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            out[key] = torch.tensor(values, dtype=torch.float64)
        else:
            out[key] = values
    return out


class SkippingDataset(Dataset):
    """Base: resolves keys and seeds, and replaces samples that fail with `MediaError` (see module doc).

    Subclasses implement `__len__` and `load(index, rng) -> dict`.
    """

    def __init__(self, *, strict: bool = False, seed: int | None = 0, max_retries: int = 50):
        self.strict = strict
        self.seed = seed
        self.max_retries = max_retries
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for integer keys (in this process; see `EpochSampler` for persistent workers)."""
        self.epoch = epoch

    def load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> dict[str, Any]:
        epoch, index = _parse_key(key, self.epoch)
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        skipped: Counter[str] = Counter()
        current = index
        last_error: MediaError | None = None
        for attempt in range(self.max_retries + 1):
            rng = sample_generator(self.seed, epoch, index, attempt)
            try:
                sample = self.load(current, rng)
            except MediaError as err:
                if self.strict:
                    raise
                skipped[err.reason] += 1
                last_error = err
                replacement = int(torch.randint(0, n, (), generator=rng).item())
                log.warning("skipping sample %d: %s; sample %d stands in", current, err, replacement)
                current = replacement
                continue
            sample["index"] = current
            sample["skipped"] = dict(skipped)
            return sample
        raise RuntimeError(
            f"{self.max_retries + 1} samples in a row failed while loading item {index} "
            f"({dict(skipped)}); last error: {last_error}. Is the data there and readable?")


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

def caption_problem(caption: Any, max_chars: int = MAX_CAPTION_CHARS) -> str | None:
    """Why a caption cannot be used (None if it can): not text, not UTF-8, too long, or no words."""
    if not isinstance(caption, str):
        return f"caption is {type(caption).__name__}, not text"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:
        # Manifests are read with errors="surrogateescape": undecodable bytes become lone surrogates.
        return "caption is not valid UTF-8"
    if len(caption) > max_chars:
        return f"caption has {len(caption)} characters, more than max_caption_chars={max_chars}"
    if not split_words(caption):
        return "caption is empty (no words once punctuation is stripped)"
    return None


# --------------------------------------------------------------------------------------------------
# Pre-training manifests
# --------------------------------------------------------------------------------------------------

@dataclass
class ManifestRow:
    """One clip of a pre-training manifest."""

    video: str  # absolute path (a relative manifest path is taken from the manifest's folder)
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = None
    captions: list[Any] | None = None  # None: the row has no text (AudioSet style); entries unchecked
    fields: dict[str, Any] = field(default_factory=dict)  # the other columns (labels, split, ...)
    line: int = 0  # line in the manifest, for messages


_RESERVED = {"video", "start", "end", "duration", "duration_s", "caption", "captions"}


def _float_field(value: Any, name: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column '{name}' must be a number of seconds, got {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{where}: column '{name}' must be a finite time >= 0, got {value!r}")
    return out


def _row_from_record(record: Mapping[str, Any], base: Path, where: str, line: int, from_csv: bool) -> ManifestRow:
    video = record.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ValueError(f"{where}: no 'video' path")
    path = Path(video.strip())
    path = path if path.is_absolute() else base / path
    captions: list[Any] | None
    if "captions" in record and record["captions"] not in (None, ""):
        raw = record["captions"]
        if from_csv:
            # In CSV, `captions` holds a JSON list of strings.
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: column 'captions' must hold a JSON list of strings ({e})") from None
        if not isinstance(raw, list):
            raise ValueError(f"{where}: 'captions' must be a list of strings, got {type(raw).__name__}")
        captions = raw or None
    elif "caption" in record and record["caption"] is not None:
        raw = record["caption"]
        # CSV cannot tell "no caption" from an empty one: a blank cell means the row has no text.
        captions = None if from_csv and isinstance(raw, str) and raw.strip() == "" else [raw]
    else:
        captions = None
    duration = record.get("duration_s", record.get("duration"))
    return ManifestRow(
        video=os.fspath(path),
        start_s=_float_field(record.get("start"), "start", where),
        end_s=_float_field(record.get("end"), "end", where),
        duration_s=_float_field(duration, "duration_s", where),
        captions=captions,
        fields={k: v for k, v in record.items() if k not in _RESERVED},
        line=line,
    )


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a pre-training manifest: CSV (header row) or JSON Lines (`.jsonl` / `.json`).

    Columns: `video` (path, relative to the manifest's folder or absolute), optional `start` / `end`
    (seconds: the clip is sampled inside), optional `duration_s`, and `caption` (one string) or
    `captions` (a list; in CSV a JSON list). A row without captions (missing, null, a blank CSV
    cell) has no text. Other columns are kept in `fields`. Bytes that are not UTF-8 do not stop the
    reading: the caption that holds them is rejected when its sample is loaded.
    Structural problems (no `video` column, unparsable line, bad times) raise ValueError naming
    the file and line.
    """
    path = Path(path)
    base = path.parent
    rows: list[ManifestRow] = []
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
                rows.append(_row_from_record(record, base, f"{path}:{n}", n, from_csv=False))
        else:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "video" not in reader.fieldnames:
                raise ValueError(f"{path}: a manifest needs a 'video' column; columns are {reader.fieldnames}")
            for record in reader:
                n = reader.line_num
                rows.append(_row_from_record(record, base, f"{path}:{n}", n, from_csv=True))
    return rows


def matches_fields(fields: Mapping[str, Any], where: Mapping[str, Any] | None, where_not: Mapping[str, Any] | None) -> bool:
    """True if every `where` column has one of its values and no `where_not` column has one of its
    values (a value or a list of values, compared as strings: {"fold": [1, 2]} matches "2")."""
    def values(v: Any) -> set[str]:
        return {str(x) for x in v} if isinstance(v, (list, tuple, set, frozenset)) else {str(v)}

    for key, allowed in (where or {}).items():
        if str(fields.get(key)) not in values(allowed):
            return False
    for key, banned in (where_not or {}).items():
        if str(fields.get(key)) in values(banned):
            return False
    return True


def context_neighbours(rows: Sequence[ManifestRow]) -> list[list[int]]:
    """For each row, the other timed rows of the same video, nearest in time first (earlier on ties).

    The HowTo100M pattern: a clip's text is its own caption plus its temporal neighbours' captions.
    Only rows with a `start` are segments with a place in time; a row without one (a whole file)
    neither has nor is a neighbour.
    """
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.start_s is not None:
            groups.setdefault(row.video, []).append(i)
    neighbours: list[list[int]] = [[] for _ in rows]
    for members in groups.values():
        ordered = sorted(members, key=lambda i: (rows[i].start_s, i))
        for pos, i in enumerate(ordered):
            near = []
            for d in range(1, len(ordered)):
                if pos - d >= 0:
                    near.append(ordered[pos - d])
                if pos + d < len(ordered):
                    near.append(ordered[pos + d])
            neighbours[i] = near
    return neighbours


@lru_cache(maxsize=1 << 16)
def _probe_duration(path: str) -> float:
    # Cached per process: a manifest without end times probes each file once per worker.
    info = decoding.probe(path)
    return info.duration_s or 0.0


@dataclass
class PretrainSampleConfig:
    """How a pre-training sample is cut and augmented (official values by default; spec section 1)."""

    train: bool = True
    num_frames: int = 32
    fps: float = decoding.REF_FPS
    size: int = transforms.IMAGE_SIZE
    audio_samples: int = 153600
    sample_rate: int = decoding.REF_SAMPLE_RATE
    max_context_sentences: int = 4
    num_windows: int = 1  # evaluation only: linearly spaced windows (1: the middle one)
    scale_jitter_prob: float = 0.8
    flip_prob: float = 0.5
    color_prob: float = 0.8
    audio_noise: float = 0.01  # sigma = audio_noise * max|x|
    max_caption_chars: int = MAX_CAPTION_CHARS
    max_pixels: int = decoding.DEFAULT_MAX_PIXELS
    short_side: int | None = None  # let the decoder shrink big frames (faster; not bit-exact)
    audio_pad: str = "mask"  # audio that ends inside the window: see decoding.decode_clip

    def __post_init__(self) -> None:
        if self.num_windows < 1 or (self.train and self.num_windows != 1):
            raise ValueError(f"num_windows must be 1 in training and >= 1 in evaluation, got {self.num_windows}")
        if self.max_context_sentences < 0:
            raise ValueError(f"max_context_sentences must be >= 0, got {self.max_context_sentences}")

    @property
    def num_captions(self) -> int:
        return self.max_context_sentences + 1


def select_captions(own: list[Any] | None, context: Iterable[Any], cfg: PretrainSampleConfig,
                    rng: torch.Generator, path: str, where: str = "") -> list[str] | None:
    """The L = `max_context_sentences + 1` captions of a clip: its own, then its neighbours', then "".

    `own` None means the clip has no text (returns None). A bad caption of the clip itself raises
    MediaError("bad_caption"); a bad neighbour caption is left out (it is counted when its own clip
    is loaded). More than L own captions: a random L in training, the first L in evaluation.
    """
    if own is None:
        return None
    for c in own:
        problem = caption_problem(c, cfg.max_caption_chars)
        if problem:
            raise MediaError(path, "bad_caption", f"{where}: {problem}" if where else problem)
    chosen = list(own)
    if len(chosen) > cfg.num_captions and cfg.train:
        pick = torch.randperm(len(chosen), generator=rng)[: cfg.num_captions].tolist()
        chosen = [chosen[i] for i in pick]
    chosen = chosen[: cfg.num_captions]
    for c in context:
        if len(chosen) >= cfg.num_captions:
            break
        if caption_problem(c, cfg.max_caption_chars) is None:
            chosen.append(c)
    return chosen + [""] * (cfg.num_captions - len(chosen))


def make_pretrain_sample(path: decoding.MediaSource, seg_start: float, seg_end: float, captions: list[str] | None,
                         tokenizer: WordTokenizer, cfg: PretrainSampleConfig, rng: torch.Generator) -> dict[str, Any]:
    """Decode, augment and tokenize one pre-training sample from `path` (a file, or `MediaBytes` in memory)
    inside [seg_start, seg_end]."""
    span = max(seg_end - seg_start, 0.0)
    mode = "random" if cfg.train else ("center" if cfg.num_windows == 1 else "linspace")
    # The window must hold both the frames and the audio that starts with them (3.2 s each at the official
    # sizes; the tiny preset's 8 frames at 10 fps are 0.8 s against 3.2 s of audio): with the frames' length
    # alone, most windows would run past the end of the audio and be masked out of the loss.
    window_s = max(cfg.num_frames / cfg.fps, cfg.audio_samples / cfg.sample_rate)
    starts = [seg_start + s for s in decoding.sample_start(span, window_s, rng, mode, cfg.num_windows)]
    videos, audios, mask = [], [], 1.0
    for start in starts:
        clip = decoding.decode_clip(path, start, cfg.num_frames, cfg.fps, cfg.audio_samples, cfg.sample_rate,
                                    max_pixels=cfg.max_pixels, short_side=cfg.short_side, audio_pad=cfg.audio_pad)
        if cfg.train:
            video = transforms.pretrain_video_transform(
                clip.frames, rng, cfg.size, scale_jitter_prob=cfg.scale_jitter_prob,
                flip_prob=cfg.flip_prob, color_prob=cfg.color_prob)
        else:
            video = transforms.eval_video_transform(clip.frames, cfg.size)
        audio = clip.audio
        if cfg.train and cfg.audio_noise > 0 and clip.audio_mask > 0:
            audio = transforms.add_gaussian_noise(audio, rng, cfg.audio_noise)
        videos.append(video)
        audios.append(audio)
        mask = min(mask, clip.audio_mask)
    if captions is None:
        text = torch.zeros(cfg.num_captions, tokenizer.max_num_words, dtype=torch.long)
    else:
        text = tokenizer.encode(captions)
    return {
        "video": videos[0] if cfg.num_windows == 1 else torch.stack(videos),
        "audio": audios[0] if cfg.num_windows == 1 else torch.stack(audios),
        "text": text,
        "audio_mask": torch.tensor(float(mask)),
        "text_mask": torch.tensor(0.0 if captions is None else 1.0),
        "caption": captions[0] if captions else "",
        "path": os.fspath(path),
        "start_s": float(starts[0]),
    }


class PretrainDataset(SkippingDataset):
    """Video-audio-text clips from a pre-training manifest (see `read_manifest`).

    Training (`train=True`): a random `num_frames / fps` window inside the row's [start, end]
    (the whole file without them), the official VGG-style augmentation (scale jitter, resize
    smallest side, random crop `size`, flip, normalise, colour jitter), audio from the same window
    with Gaussian noise (sigma = `audio_noise` * max|x|), and text = the row's captions followed by
    its neighbours' (`context_neighbours`), L = `max_context_sentences + 1` rows, padded with empty
    captions (all-pad rows), as DMVR pads with empty strings. When a row has more than L captions,
    training picks L at random (DMVR `sample_or_pad_non_sorted_sequence`), evaluation the first L.

    Evaluation (`train=False`): the middle window (or `num_windows` linearly spaced ones), resize
    smallest side + centre crop, no noise, first captions; errors always raise.

    Rows without captions give all-zero text and `text_mask=0`; files without audio zeros and
    `audio_mask=0` (the official treatment of AudioSet / silent sources). Keyword arguments other
    than those below are `PretrainSampleConfig` fields.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Sequence[ManifestRow],
        tokenizer: WordTokenizer,
        *,
        where: Mapping[str, Any] | None = None,
        where_not: Mapping[str, Any] | None = None,
        strict: bool = False,
        seed: int | None = 0,
        max_retries: int = 50,
        **config: Any,
    ):
        self.config = PretrainSampleConfig(**config)
        super().__init__(strict=strict or not self.config.train, seed=seed, max_retries=max_retries)
        rows = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
        self.rows = [r for r in rows if matches_fields(r.fields, where, where_not)]
        if not self.rows:
            name = manifest if isinstance(manifest, (str, os.PathLike)) else "the manifest"
            raise ValueError(f"no rows in {name} match where={where} where_not={where_not}")
        self.neighbours = context_neighbours(self.rows)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int, rng: torch.Generator) -> dict[str, Any]:
        row = self.rows[index]
        context = (c for j in self.neighbours[index] for c in (self.rows[j].captions or []))
        captions = select_captions(row.captions, context, self.config, rng, row.video, f"manifest line {row.line}")
        seg_start = row.start_s or 0.0
        seg_end = row.end_s
        if seg_end is None:
            seg_end = row.duration_s if row.duration_s is not None else _probe_duration(row.video)
        return make_pretrain_sample(row.video, seg_start, seg_end, captions, self.tokenizer, self.config, rng)


# --------------------------------------------------------------------------------------------------
# Classification (video, audio, image)
# --------------------------------------------------------------------------------------------------

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


def scan_reason(path: Path, wanted: str) -> str:
    """Why a folder scan for `wanted` files ("video", "audio", "image", or "video or audio") leaves `path` out."""
    ext = path.suffix.lower() or "(no extension)"
    for kind, exts in (("video", VIDEO_EXTENSIONS), ("audio", AUDIO_EXTENSIONS), ("image", IMAGE_EXTENSIONS)):
        if ext in exts:
            return f"{kind} file, this scan takes {wanted} files"
    return f"{ext} is not a media format vatt reads"


def format_left_out(left_out: Mapping[str, int]) -> str:
    return "; ".join(f"{n} {why}" for why, n in sorted(left_out.items(), key=lambda kv: (-kv[1], kv[0])))


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
        seg_end = item.end_s if item.end_s is not None else _probe_duration(item.path)
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
                 end_column: str | None = None, csv_delimiter: str = ",", **kwargs: Any) -> ClassificationDataset:
        """Files and labels from a CSV with a header.

        - Paths are relative to `root` (default: the CSV's folder) unless absolute.
        - `label_delimiter` makes it multi-label (AudioSet: "/m/09x0r,/m/05zppz").
        - `where` / `where_not` keep rows by column values: ESC-50 folds
          (`where_not={"fold": 1}` to train, `where={"fold": 1}` to test), an FSDD or sample-data
          `split` column (`where={"split": "train"}`).
        - `start_column` / `end_column` give a time span per row (AudioSet segments).
        Classes: given (list or a file with one per line), else the sorted labels of all rows
        (before filtering, so train and test subsets agree).
        """
        csv_path = Path(csv_path)
        base = Path(root) if root is not None else csv_path.parent
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=csv_delimiter, skipinitialspace=True)
            missing = [c for c in (path_column, label_column) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_path}: no column {missing}; columns are {reader.fieldnames}")
            records = [(reader.line_num, r) for r in reader]

        def labels_of(record: Mapping[str, str]) -> list[str]:
            raw = (record[label_column] or "").strip()
            if label_delimiter is None:
                return [raw]
            return [x.strip() for x in raw.split(label_delimiter) if x.strip()]

        names = _read_class_list(classes) if classes is not None else _sorted_classes(
            lab for _, r in records for lab in labels_of(r))
        index = {c: i for i, c in enumerate(names)}
        items = []
        for line, record in records:
            if not matches_fields(record, where, where_not):
                continue
            labs = labels_of(record)
            unknown = [lab for lab in labs if lab not in index]
            if unknown or not labs:
                raise ValueError(f"{csv_path}:{line}: label {unknown or labs} not among the {len(names)} classes")
            p = Path(record[path_column].strip())
            p = p if p.is_absolute() else base / p
            where_txt = f"{csv_path}:{line}"
            label: int | tuple[int, ...] = tuple(index[lab] for lab in labs) if label_delimiter else index[labs[0]]
            items.append(LabeledItem(
                os.fspath(p), label,
                _float_field(record.get(start_column), start_column, where_txt) if start_column else None,
                _float_field(record.get(end_column), end_column, where_txt) if end_column else None))
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
