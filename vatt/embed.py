"""Embeddings of your own video, audio and text: pooled backbone features and common-space embeddings.

    model = vatt.load("converted/bbs")
    v = model.embed_video(["a.mp4", "b.mp4"])              # one centre window per file
    v.features, v.va, v.vt                                 # [2, 768], [2, 512], [2, 256]
    v = model.embed_video(["a.mp4"], num_windows=4)        # official test windows: [1, 4, ...]
    a = model.embed_audio(["a.wav"])                       # features, va
    t = model.embed_text(["a dog catches a frisbee"])      # features, vt
    model.embed_video(torch.rand(2, 32, 224, 224, 3) * 2 - 1)   # tensors in, [2, ...] out

What each field is (spec sections 2 and 5):
- `features`: the backbone's `features_pooled`, the AGG token after the final LayerNorm (the input of the
  FAC head, and of the official linear probe);
- `va` / `vt`: the FAC head's outputs in the fine video-audio space (`video.toaud`, `audio.tovid`) and the
  coarse video-text space (`video.totxt`, `text.tovid`). They are *not* L2-normalised; cosine similarity
  (what the official evaluation uses) needs `F.normalize` first.
A fine-tuned `Classifier` gives `features` and `logits` only (it has no FAC head).

Input sizes come from the model config: the frame count, frame size and audio length its positional
tables were made for (official: 32 frames, 224x224, 153,600 samples at 48 kHz; the tiny presets: 8
frames of 64x64, 25,600 samples at 8 kHz). Frames are sampled at `fps` (10 by default, the official
pre-training rate; the official evaluation loaders take every 2nd frame of 25 fps sources, 12.5 fps).

Windows of a file. `num_windows=1` takes the middle window (the official linear-probe training
features); `num_windows=W > 1` takes W linearly spaced windows from the start to the end of the file
(the official test protocol uses 4), and the outputs gain a window axis `[N, W, D]`. A file shorter than
a window gives windows that all start at 0; its frames are looped and its audio repeated to fill the
window, as the official (DMVR) samplers pad short sequences. Video frames are resized (smallest side)
and centre-cropped, the official evaluation transform. Audio is decoded from the same window as the
video (the official synchronised sampling); a video file has audio only if it has an audio stream.

Files that cannot be used (missing, empty, corrupt, no video stream when video is required, ...) raise
`MediaError` naming the file and the reason, or, with `skip_bad=True`, are left out and listed in
`FileEmbeddings.errors`.

`write_embeddings` / `read_embeddings` store a `FileEmbeddings` as `<name>.npz` (arrays; numpy reads it
without pickle) plus `<name>.csv` (one row per file window: path, window, start and end time, which
modalities it has, and the manifest's other columns; pandas reads it with `pd.read_csv`) and, when there
are captions, `<name>.text.csv`. See `write_embeddings` for the array names.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vatt.atomic import atomic_group
from vatt.data.errors import WORKER_DEATH_ERRORS, is_worker_death, worker_died
from vatt.data.manifest import MediaEntry

MODALITIES = ("video", "audio", "text")
# The frame rate every command samples at unless told otherwise: the official pre-training rate (`REF_FPS`),
# the rate the models were trained at. (The official evaluation loaders take every 2nd frame of 25 fps
# sources, 12.5 fps; pass fps=12.5 for that.)
DEFAULT_FPS = 10.0

Progress = Callable[[int, int], None]  # (done, total)


class MissingVocabulary(ValueError):
    """Captions were given to a model that has no word tokenizer (its folder has no vocab.txt)."""


# --------------------------------------------------------------------------------------------------
# Input sizes
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipSpec:
    """What one window of a file becomes: frames, frame size, audio samples and rates.

    `None` for a modality the model does not have.
    """

    num_frames: int | None
    size: int | None
    fps: float
    audio_samples: int | None
    sample_rate: int | None

    @property
    def video_seconds(self) -> float | None:
        return None if self.num_frames is None else self.num_frames / self.fps

    @property
    def audio_seconds(self) -> float | None:
        return None if self.audio_samples is None else self.audio_samples / self.sample_rate


def _video_sizes(cfg) -> tuple[int, int]:
    return (cfg.max_temporal_buckets * cfg.temporal_patch_size,
            cfg.max_vertical_buckets * cfg.spatial_patch_size)


def _audio_sizes(cfg) -> tuple[int, int]:
    if cfg.input == "waveform":
        return cfg.max_temporal_buckets * cfg.temporal_patch_size, cfg.sample_rate
    # SpT: the official 3.2 s of waveform, turned into a spectrogram inside the model.
    return int(round(3.2 * cfg.sample_rate)), cfg.sample_rate


def clip_spec(model_or_config: Any, fps: float | None = None) -> ClipSpec:
    """The input sizes a model (or model config) was made for: its positional tables' extent, sampled at
    `fps` (None: `DEFAULT_FPS`). The one place that says what a window of a file becomes."""
    cfg = getattr(model_or_config, "config", model_or_config)
    kind = getattr(cfg, "kind", None)
    frames = size = samples = rate = None
    if kind == "ut_fac":
        frames = cfg.max_video_temporal_buckets * cfg.video_temporal_patch_size
        size = cfg.max_video_spatial_buckets * cfg.video_spatial_patch_size
        samples, rate = cfg.max_audio_temporal_buckets * cfg.audio_temporal_patch_size, 48000
    elif kind in ("tx_fac", "video_classifier", "audio_classifier"):
        if getattr(cfg, "video", None) is not None:
            frames, size = _video_sizes(cfg.video)
        if getattr(cfg, "audio", None) is not None:
            samples, rate = _audio_sizes(cfg.audio)
    else:
        raise TypeError(f"no input sizes for a {type(cfg).__name__} (expected a VATT model or its config)")
    fps = DEFAULT_FPS if fps is None else fps
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return ClipSpec(num_frames=frames, size=size, fps=float(fps), audio_samples=samples, sample_rate=rate)


def model_modalities(model: nn.Module) -> tuple[str, ...]:
    """Modalities the model can embed: all three for tx_fac/ut_fac, its own one for a Classifier."""
    kind = getattr(getattr(model, "config", None), "kind", None)
    if kind in ("tx_fac", "ut_fac"):
        return MODALITIES
    if kind == "video_classifier":
        return ("video",)
    if kind == "audio_classifier":
        return ("audio",)
    raise TypeError(f"cannot embed with a {type(model).__name__}: expected VATT, UnifiedVATT or Classifier")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------

@dataclass
class Embeddings:
    """One modality's embeddings (float32, on CPU).

    features: `[N, D]` backbone `features_pooled`, or `[N, W, D]` for W windows per file.
    va: `[N, (W,) d_va]` (video, audio) or None; vt: `[N, (W,) d_vt]` (video, text) or None.
    logits: `[N, (W,) C]` for a fine-tuned Classifier, else None.
    paths / start_s `[N, W]` / mask `[N, W]`: for files; mask is 1 where real audio covered the window.
    texts: the captions, for text.
    """

    modality: str
    features: torch.Tensor
    va: torch.Tensor | None = None
    vt: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    paths: list[str] | None = None
    start_s: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    texts: list[str] | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def arrays(self) -> dict[str, torch.Tensor]:
        """The embedding tensors that are present: features, va, vt, logits."""
        return {k: v for k, v in (("features", self.features), ("va", self.va), ("vt", self.vt),
                                  ("logits", self.logits)) if v is not None}


@dataclass
class FileEmbeddings:
    """Embeddings of media files, every modality on the same rows: file `i`, window `w`.

    video / audio: `Embeddings` with `[N, W, D]` arrays; rows of a file without that modality are NaN
    (see `has_video`, `has_audio`; `audio_mask` says which windows real audio covered). `start_s`
    `[N, W]` is each window's start (seconds from the start of the file); a window covers
    `spec.video_seconds` of video and `spec.audio_seconds` of audio from there.
    `entries` carries each file's manifest row (captions, label, ...); `errors` the files left out.
    """

    paths: list[str]
    start_s: torch.Tensor
    has_video: torch.Tensor  # [N] bool: video was embedded
    has_audio: torch.Tensor  # [N] bool: audio was embedded (the file has an audio stream)
    audio_mask: torch.Tensor  # [N, W] float: 1 where real audio covered the window, 0 where not or no audio
    spec: ClipSpec
    num_windows: int
    video: Embeddings | None = None
    audio: Embeddings | None = None
    entries: list["MediaEntry"] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------------

def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _autocast(device: torch.device, precision: str):
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _is_classifier(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "kind", None) in ("video_classifier", "audio_classifier")


@torch.inference_mode()
def forward_modality(model: nn.Module, modality: str, x: torch.Tensor,
                     precision: str = "fp32") -> dict[str, torch.Tensor]:
    """One batch of one modality through the model in eval mode -> float32 CPU tensors.

    Keys: "features" always; "va" (video, audio), "vt" (video, text) for VATT/UnifiedVATT; "logits" for a
    Classifier. The caller sets eval mode (the FAC head's BatchNorm must use its moving statistics).
    """
    if modality not in model_modalities(model):
        takes = ", ".join(model_modalities(model))
        raise ValueError(f"this {type(model).__name__} cannot embed {modality} (it takes {takes})")
    device = _device(model)
    x = x.to(device)
    with _autocast(device, precision):
        if _is_classifier(model):
            out = model(x)
            result = {"features": out.features_pooled, "logits": out.logits}
        else:
            out = model(**{modality: x})
            if modality == "video":
                result = {"features": out.video.features_pooled, "va": out.video_va, "vt": out.video_vt}
            elif modality == "audio":
                result = {"features": out.audio.features_pooled, "va": out.audio_va}
            else:
                result = {"features": out.text.features_pooled, "vt": out.text_vt}
    return {k: v.float().cpu() for k, v in result.items()}


class _EvalMode:
    """Puts a model in eval mode for a block and restores its previous mode."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _embed_tensor(model: nn.Module, modality: str, x: torch.Tensor, batch_size: int, precision: str,
                  progress: Progress | None) -> Embeddings:
    parts: dict[str, list[torch.Tensor]] = {}
    n = x.shape[0]
    with _EvalMode(model):
        for lo in range(0, n, batch_size):
            for k, v in forward_modality(model, modality, x[lo:lo + batch_size], precision).items():
                parts.setdefault(k, []).append(v)
            if progress:
                progress(min(lo + batch_size, n), n)
    arrays = {k: torch.cat(v) for k, v in parts.items()}
    return Embeddings(modality=modality, **arrays)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def embed_video(model: nn.Module, videos, *, num_windows: int = 1, fps: float | None = None, batch_size: int = 8,
                precision: str = "fp32", num_workers: int = 0, skip_bad: bool = False,
                progress: Progress | None = None) -> Embeddings:
    """Embed videos: a tensor `[B, T, H, W, 3]` in [-1, 1] (used as is) or a list of file paths.

    For files: `num_windows` windows per file (1 = the middle one, W > 1 = W linearly spaced ones,
    outputs `[N, W, D]`), `fps` frames per second, frames resized and centre-cropped to the model's size.
    With `skip_bad=True` unusable files are left out (see `paths`); otherwise they raise MediaError.
    """
    _check_batch_size(batch_size)
    if torch.is_tensor(videos):
        if videos.dim() != 5:
            raise ValueError(f"videos: expected a tensor [B, T, H, W, 3] in [-1, 1], got shape {tuple(videos.shape)}")
        return _embed_tensor(model, "video", videos, batch_size, precision, progress)
    result = embed_files(model, _as_paths(videos), modalities=("video",), num_windows=num_windows, fps=fps,
                         batch_size=batch_size, precision=precision, num_workers=num_workers,
                         skip_bad=skip_bad, progress=progress)
    return _squeeze_windows(result.video, num_windows)


def embed_audio(model: nn.Module, audio, *, num_windows: int = 1, batch_size: int = 8, precision: str = "fp32",
                num_workers: int = 0, skip_bad: bool = False, progress: Progress | None = None) -> Embeddings:
    """Embed audio: a tensor `[B, N]` / `[B, N, 1]` of waveforms at the model's sample rate, or file paths
    (audio files, or the audio track of video files; resampled to the model's rate, mixed to mono)."""
    _check_batch_size(batch_size)
    if torch.is_tensor(audio):
        if audio.dim() not in (2, 3):
            raise ValueError(f"audio: expected a tensor [B, N] or [B, N, 1], got shape {tuple(audio.shape)}")
        return _embed_tensor(model, "audio", audio, batch_size, precision, progress)
    result = embed_files(model, _as_paths(audio), modalities=("audio",), num_windows=num_windows,
                         batch_size=batch_size, precision=precision, num_workers=num_workers,
                         skip_bad=skip_bad, progress=progress)
    return _squeeze_windows(result.audio, num_windows)


def embed_text(model: nn.Module, captions: Sequence[str] | torch.Tensor, *, tokenizer=None, batch_size: int = 256,
               precision: str = "fp32", progress: Progress | None = None) -> Embeddings:
    """Embed captions (a list of strings, tokenized with `tokenizer` or `model.tokenizer`) or word ids
    `[N, n_words]`. Returns `features` (the text backbone's pooled output) and `vt` (`text.tovid`)."""
    _check_batch_size(batch_size)
    if torch.is_tensor(captions):
        return _embed_tensor(model, "text", captions, batch_size, precision, progress)
    if isinstance(captions, str):
        raise TypeError("embed_text takes a list of captions, not one string")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise MissingVocabulary("no word tokenizer: this model folder has no vocab.txt; pass "
                                "tokenizer=vatt.data.text.WordTokenizer.from_vocab_file(<the vocabulary it was trained "
                                "with>)")
    captions = list(captions)
    ids = tokenizer.encode(captions)
    out = _embed_tensor(model, "text", ids, batch_size, precision, progress)
    out.texts = captions
    return out


def _as_paths(items) -> list[str]:
    if isinstance(items, (str, os.PathLike)):
        return [os.fspath(items)]
    return [os.fspath(p) for p in items]


def _squeeze_windows(emb: Embeddings | None, num_windows: int) -> Embeddings:
    if emb is None:
        raise ValueError("no file gave an embedding")
    if num_windows == 1:
        for name in ("features", "va", "vt", "logits"):
            v = getattr(emb, name)
            if v is not None:
                setattr(emb, name, v[:, 0])
    return emb


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

class _FileWindows(torch.utils.data.Dataset):
    """Decodes all windows of one file per item; a MediaError is returned (not raised) for the caller."""

    def __init__(self, paths: Sequence[str], spec: ClipSpec, modalities: tuple[str, ...] | None,
                 model_modalities: tuple[str, ...], num_windows: int):
        self.paths, self.spec, self.modalities = list(paths), spec, modalities
        self.model_modalities, self.num_windows = model_modalities, num_windows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from vatt.data.errors import MediaError

        try:
            return self._load(i)
        except MediaError as err:
            return {"index": i, "error": err}

    def _load(self, i: int) -> dict[str, Any]:
        from vatt.data import decoding, transforms
        from vatt.data.errors import MediaError

        path, spec = self.paths[i], self.spec
        info = decoding.probe(path)
        can = set(self.model_modalities)
        if self.modalities is None:  # auto: what both the file and the model have
            want_video = "video" in can and info.has_video
            want_audio = "audio" in can and info.has_audio
            if not (want_video or want_audio):
                kinds = [m for m in ("video", "audio") if m in can]
                raise MediaError(path, "no_video_stream" if "video" in kinds else "no_audio_stream",
                                 f"no {' or '.join(kinds)} stream to embed")
        else:
            want_video, want_audio = "video" in self.modalities, "audio" in self.modalities
            if want_video and not info.has_video:
                raise MediaError(path, "no_video_stream", f"{info.format_name} file without a video stream")
            if want_audio and not want_video and not info.has_audio:
                raise MediaError(path, "no_audio_stream", f"{info.format_name} file without an audio stream")
            want_audio = want_audio and info.has_audio  # with video, audio is added where there is some
        # A window of a video holds its frames and the audio that starts with them (as in pre-training), so
        # both fit in the file, and the frames of a window do not depend on whether its audio is embedded.
        clip_s = max(spec.video_seconds or 0.0, spec.audio_seconds or 0.0) if want_video else spec.audio_seconds
        mode = "center" if self.num_windows == 1 else "linspace"
        starts = decoding.sample_start(info.duration_s or 0.0, clip_s, mode=mode, num_windows=self.num_windows)
        videos, audios, masks = [], [], []
        for start in starts:
            if want_video:
                clip = decoding.decode_clip(path, start, spec.num_frames, spec.fps,
                                            spec.audio_samples or 0, spec.sample_rate or decoding.REF_SAMPLE_RATE,
                                            decode_audio=want_audio, audio_pad="loop")
                videos.append(transforms.eval_video_transform(clip.frames, spec.size))
                if want_audio:
                    audios.append(clip.audio)
                    masks.append(clip.audio_mask)
            else:
                audio, mask = decoding.decode_audio(path, start, spec.audio_samples, spec.sample_rate, pad="loop",
                                                    require_audio=True)
                audios.append(audio)
                masks.append(mask)
        return {
            "index": i, "error": None, "start_s": torch.tensor(starts, dtype=torch.float64),
            "video": torch.stack(videos) if videos else None,
            "audio": torch.stack(audios) if audios else None,
            "audio_mask": torch.tensor(masks if masks else [0.0] * len(starts), dtype=torch.float32),
        }


class _Batcher:
    """Collects windows of one modality and runs the model on `batch_size` of them at a time."""

    def __init__(self, model: nn.Module, modality: str, batch_size: int, precision: str):
        self.model, self.modality, self.batch_size, self.precision = model, modality, batch_size, precision
        self.pending: list[tuple[int, torch.Tensor]] = []  # (file index, [W, ...] windows)
        self.results: dict[int, dict[str, torch.Tensor]] = {}

    def add(self, index: int, windows: torch.Tensor) -> None:
        self.pending.append((index, windows))
        if sum(w.shape[0] for _, w in self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = torch.cat([w for _, w in self.pending])
        outs: dict[str, list[torch.Tensor]] = {}
        for lo in range(0, x.shape[0], self.batch_size):
            for k, v in forward_modality(self.model, self.modality, x[lo:lo + self.batch_size], self.precision).items():
                outs.setdefault(k, []).append(v)
        cat = {k: torch.cat(v) for k, v in outs.items()}
        row = 0
        for index, w in self.pending:
            self.results[index] = {k: v[row:row + w.shape[0]] for k, v in cat.items()}
            row += w.shape[0]
        self.pending = []


def embed_files(model: nn.Module, paths: Sequence[str | os.PathLike], *, modalities: Sequence[str] | None = None,
                num_windows: int = 1, fps: float | None = None, batch_size: int = 8, precision: str = "fp32",
                num_workers: int = 0, skip_bad: bool = False, progress: Progress | None = None,
                entries: Sequence["MediaEntry"] | None = None) -> FileEmbeddings:
    """Embed the video and/or audio of media files, `num_windows` windows per file (see module doc).

    modalities: None (default) embeds what each file has and the model takes (video, audio or both);
        ("video",) requires a video stream, ("audio",) an audio stream, ("video", "audio") a video stream
        and adds its audio where there is some (the rest: NaN rows, audio_mask 0).
    num_workers: decoding processes (DataLoader workers); 0 decodes in this process.
    skip_bad: leave unusable files out (listed in `errors`) instead of raising their MediaError.
    entries: the manifest rows of `paths` (kept in the result, filtered like the paths).
    """
    from vatt.data.errors import MediaError

    _check_batch_size(batch_size)
    if num_windows < 1:
        raise ValueError(f"num_windows must be >= 1, got {num_windows}")
    can = model_modalities(model)
    if modalities is not None:
        modalities = tuple(dict.fromkeys(modalities))
        bad = [m for m in modalities if m not in ("video", "audio")]
        if bad or not modalities:
            raise ValueError(f"modalities of files must be 'video' and/or 'audio', got {list(modalities) or 'none'}")
        missing = [m for m in modalities if m not in can]
        if missing:
            raise ValueError(f"this {type(model).__name__} has no {' or '.join(missing)} backbone")
    spec = clip_spec(model, fps)
    paths = _as_paths(paths)
    if entries is not None and len(entries) != len(paths):
        raise ValueError(f"{len(entries)} entries for {len(paths)} paths")
    data = _FileWindows(paths, spec, modalities, tuple(m for m in can if m != "text"), num_windows)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=num_workers)
    batchers = {m: _Batcher(model, m, batch_size, precision) for m in ("video", "audio") if m in can}
    starts: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {}
    errors: list[MediaError] = []
    with _EvalMode(model), _worker_death_reported(len(paths)):
        for done, item in enumerate(loader, start=1):
            if item["error"] is not None:
                if not skip_bad:
                    raise item["error"]
                errors.append(item["error"])
            else:
                i = item["index"]
                starts[i], masks[i] = item["start_s"], item["audio_mask"]
                for m in ("video", "audio"):
                    if item[m] is not None:
                        batchers[m].add(i, item[m])
            if progress:
                progress(done, len(paths))
        for b in batchers.values():
            b.flush()
    kept = sorted(starts)
    if not kept:
        reasons = "; ".join(str(e) for e in errors[:3])
        raise ValueError(f"none of the {len(paths)} files could be embedded ({reasons})")
    result = FileEmbeddings(
        paths=[paths[i] for i in kept],
        start_s=torch.stack([starts[i] for i in kept]),
        has_video=torch.tensor([i in batchers["video"].results if "video" in batchers else False for i in kept],
                               dtype=torch.bool),
        has_audio=torch.tensor([i in batchers["audio"].results if "audio" in batchers else False for i in kept],
                               dtype=torch.bool),
        audio_mask=torch.stack([masks[i] for i in kept]),
        spec=spec, num_windows=num_windows,
        entries=[entries[i] for i in kept] if entries is not None else [],
        errors=errors)
    for m, b in batchers.items():
        if not b.results:
            continue
        arrays = _rows_with_nan(b.results, kept, num_windows)
        setattr(result, m, Embeddings(modality=m, paths=result.paths, start_s=result.start_s,
                                      mask=result.audio_mask if m == "audio" else None, **arrays))
    return result


@contextlib.contextmanager
def _worker_death_reported(num_files: int):
    try:
        yield
    except WORKER_DEATH_ERRORS as e:
        if not is_worker_death(e):
            raise
        raise worker_died(e, f"Embedding of {num_files} files stopped; nothing was written: run it again "
                             "(with fewer workers if memory is short).") from None


def _rows_with_nan(results: Mapping[int, Mapping[str, torch.Tensor]], kept: list[int],
                   num_windows: int) -> dict[str, torch.Tensor]:
    """Stack per-file [W, D] outputs into [N, W, D], NaN for files without this modality."""
    example = next(iter(results.values()))
    out = {}
    for key, value in example.items():
        full = torch.full((len(kept), num_windows, value.shape[-1]), math.nan, dtype=torch.float32)
        for row, i in enumerate(kept):
            if i in results:
                full[row] = results[i][key]
        out[key] = full
    return out


# --------------------------------------------------------------------------------------------------
# Embedding files on disk
# --------------------------------------------------------------------------------------------------

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
