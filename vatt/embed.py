"""Embeddings of your own video, audio and text: pooled backbone features and common-space embeddings.

    model = vatt.load("converted/bbs")
    v = model.embed_video(["a.mp4", "b.mp4"])              # one centre window per file
    v.features, v.va, v.vt                                 # [2, 768], [2, 512], [2, 256]
    v = model.embed_video(["a.mp4"], num_windows=4)        # official test windows: [1, 4, ...]
    a = model.embed_audio(["a.wav"])                       # features, va
    t = model.embed_text(["a dog catches a frisbee"])      # features, vt
    model.embed_video(torch.rand(2, 32, 224, 224, 3) * 2 - 1)   # tensors in, [2, ...] out

The same functions take the model as their first argument (`vatt.embed.embed_video(model, ...)`); the
methods are those functions, bound by `vatt.load` / `vatt.build_model` (`with_embedding_methods`).

What each field is (spec sections 2 and 5):
- `features`: the backbone's `features_pooled`, the AGG token after the final LayerNorm (the input of the
  FAC head, and of the official linear probe);
- `va` / `vt`: the FAC head's outputs in the fine video-audio space (`video.toaud`, `audio.tovid`) and the
  coarse video-text space (`video.totxt`, `text.tovid`). They are *not* L2-normalised; cosine similarity
  (what the official evaluation uses) needs `F.normalize` first.
A fine-tuned `Classifier` gives `features` and `logits` only (it has no FAC head).

Input sizes come from the model config (`vatt.configs.input_spec`): the frame count, frame size and audio
length its positional tables were made for (official: 32 frames, 224x224, 153,600 samples at 48 kHz; the
tiny presets: 8 frames of 64x64, 25,600 samples at 8 kHz). Frames are sampled at `fps` (10 by default, the
official pre-training rate; the official evaluation loaders take every 2nd frame of 25 fps sources, 12.5 fps).
The model runs through `vatt.inference` (eval mode, no autograd, the autocast policy of `precision`).

Windows of a file. `num_windows=1` takes the middle window (the official linear-probe training
features); `num_windows=W > 1` takes W linearly spaced windows from the start to the end of the file
(the official test protocol uses 4), and the outputs gain a window axis `[N, W, D]`. A file shorter than
a window gives windows that all start at 0; its frames are looped and its audio repeated to fill the
window, as the official (DMVR) samplers pad short sequences. Video frames are resized (smallest side)
and centre-cropped, the official evaluation transform. Audio is decoded from the same window as the
video (the official synchronised sampling); a video file has audio only if it has an audio stream.

Files that cannot be used (missing, empty, corrupt, no video stream when video is required, ...) raise
`MediaError` naming the file and the reason, or, with `skip_bad=True`, are left out and listed in
`FileEmbeddings.errors`. `vatt.embedding_files` writes and reads them as `.npz` + `.csv`.
"""
from __future__ import annotations

import contextlib
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vatt.configs import InputSpec, input_spec
from vatt.data import decoding, transforms
from vatt.data.errors import WORKER_DEATH_ERRORS, MediaError, is_worker_death, worker_died
from vatt.data.manifest import MediaEntry
from vatt.inference import Progress, WindowBatcher, forward_windows, model_modalities



class MissingVocabulary(ValueError):
    """Captions were given to a model that has no word tokenizer (its folder has no vocab.txt)."""


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
    spec: InputSpec
    num_windows: int
    video: Embeddings | None = None
    audio: Embeddings | None = None
    entries: list[MediaEntry] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------------------
# Tensors and captions
# --------------------------------------------------------------------------------------------------

def _embed_tensor(model: nn.Module, modality: str, x: torch.Tensor, batch_size: int, precision: str,
                  progress: Progress | None) -> Embeddings:
    return Embeddings(modality=modality, **forward_windows(model, modality, x, batch_size, precision, progress))


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

class FileWindows(torch.utils.data.Dataset):
    """Decodes all windows of one file per item; a MediaError is returned (not raised) for the caller."""

    def __init__(self, paths: Sequence[str], spec: InputSpec, modalities: tuple[str, ...] | None,
                 model_modalities: tuple[str, ...], num_windows: int):
        self.paths, self.spec, self.modalities = list(paths), spec, modalities
        self.model_modalities, self.num_windows = model_modalities, num_windows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self._load(i)
        except MediaError as err:
            return {"index": i, "error": err}

    def _load(self, i: int) -> dict[str, Any]:
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


def embed_files(model: nn.Module, paths: Sequence[str | os.PathLike], *, modalities: Sequence[str] | None = None,
                num_windows: int = 1, fps: float | None = None, batch_size: int = 8, precision: str = "fp32",
                num_workers: int = 0, skip_bad: bool = False, progress: Progress | None = None,
                entries: Sequence[MediaEntry] | None = None) -> FileEmbeddings:
    """Embed the video and/or audio of media files, `num_windows` windows per file (see module doc).

    modalities: None (default) embeds what each file has and the model takes (video, audio or both);
        ("video",) requires a video stream, ("audio",) an audio stream, ("video", "audio") a video stream
        and adds its audio where there is some (the rest: NaN rows, audio_mask 0).
    num_workers: decoding processes (DataLoader workers); 0 decodes in this process.
    skip_bad: leave unusable files out (listed in `errors`) instead of raising their MediaError.
    entries: the manifest rows of `paths` (kept in the result, filtered like the paths).
    """
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
    spec = input_spec(model, fps)
    paths = _as_paths(paths)
    if entries is not None and len(entries) != len(paths):
        raise ValueError(f"{len(entries)} entries for {len(paths)} paths")
    data = FileWindows(paths, spec, modalities, tuple(m for m in can if m != "text"), num_windows)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=num_workers)
    batchers = {m: WindowBatcher(model, m, batch_size, precision) for m in ("video", "audio") if m in can}
    starts: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {}
    errors: list[MediaError] = []
    with _worker_death_reported(len(paths)):
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


@dataclass
class EntryEmbeddings:
    """What `embed_entries` gives: the files' embeddings, and their captions' (plus free texts).

    text_clip: per caption row, the file row it belongs to (-1 for a free text)."""

    files: FileEmbeddings | None
    text: Embeddings | None
    text_clip: list[int]


CAPTION_CHOICES = ("all", "first", "none")


def embed_entries(model: nn.Module, entries: Sequence[MediaEntry], *, captions: str = "all",
                  texts: Sequence[str] = (), text_batch_size: int = 64, progress: Progress | None = None,
                  **file_options: Any) -> EntryEmbeddings:
    """Embed media entries (`list_media` / `read_manifest_entries` rows) with `embed_files`, then their
    captions with `embed_text`: every caption of each file (`captions="all"`), its first (`"first"`, the
    official one text per video) or none; `texts` are free captions embedded first (text_clip -1).

    Captions need a text tower: free texts raise without one, a manifest's captions are then left out.
    `file_options` go to `embed_files` (modalities, num_windows, fps, batch_size, precision, ...).
    """
    if captions not in CAPTION_CHOICES:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_CHOICES)}, got {captions!r}")
    files = None
    if entries:
        files = embed_files(model, [e.path for e in entries], entries=entries, progress=progress, **file_options)
    chosen, text_clip = list(texts), [-1] * len(texts)
    if files is not None and captions != "none":
        for clip, entry in enumerate(files.entries):
            mine = entry.captions[:1] if captions == "first" else entry.captions
            chosen += mine
            text_clip += [clip] * len(mine)
    if texts and "text" not in model_modalities(model):
        raise ValueError(f"texts given, but this {type(model).__name__} has no text tower")
    text = None
    if chosen and "text" in model_modalities(model):
        text = embed_text(model, chosen, batch_size=text_batch_size,
                          precision=file_options.get("precision", "fp32"))
    return EntryEmbeddings(files, text, text_clip if text is not None else [])


# --------------------------------------------------------------------------------------------------
# The embedding methods of a model
# --------------------------------------------------------------------------------------------------
# `vatt/model/` knows nothing of files, decoding or batching: the model classes do not import this module.
# The embedding functions become methods of the model *instances* users get from `vatt.load` and
# `vatt.build_model` (bound here, as Python binds a function to an instance), so that
# `model.embed_video(...)` reads as before while the dependency points one way: embed -> model.

_METHODS = {"video": embed_video, "audio": embed_audio, "text": embed_text}


def with_embedding_methods(model: nn.Module) -> nn.Module:
    """`model` with `embed_video` / `embed_audio` / `embed_text` bound for the modalities it takes; returns it."""
    for modality in model_modalities(model):
        method = _METHODS[modality]
        setattr(model, method.__name__, types.MethodType(method, model))
    return model
