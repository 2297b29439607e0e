"""The pre-training dataset: video-audio-text clips cut from the rows of a manifest.

Each sample (see `PretrainDataset`) is a dict that `vatt.data.sampling.collate` batches: `video` float32
[T, S, S, 3] in [-1, 1] (evaluation with `num_windows` > 1: [V, T, S, S, 3]), `audio` float32 [N] (or
[V, N]), `text` int64 [L, 16] with L = `max_context_sentences + 1`, `audio_mask` / `text_mask` float32
scalars, `caption` (the row's first caption, "" if none), `path`, `start_s`, `index`, `skipped`. The
model's text input is `text.reshape(B * L, 16)` (clip-major, as the official loss expects).
`vatt.data.shards.ShardDataset` (streaming) yields the same dicts with `key` ("shard:key") in place of
`index`; both cut samples with `make_pretrain_sample` and choose captions with `select_captions`.
Randomness, skipping of bad input and batching: `vatt.data.sampling`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vatt.data import decoding, transforms
from vatt.data.errors import MediaError
from vatt.data.manifest import ManifestRow, read_manifest, row_matches
from vatt.data.sampling import SkippingDataset
from vatt.data.text import WordTokenizer, split_words

MAX_CAPTION_CHARS = 1000  # longer "captions" are broken rows (a transcript or a file pasted into a cell)


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


# --------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------

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
        self.rows = [r for r in rows if row_matches(r.fields, where, where_not)]
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
            seg_end = row.duration_s if row.duration_s is not None else decoding.file_duration(row.video)
        return make_pretrain_sample(row.video, seg_start, seg_end, captions, self.tokenizer, self.config, rng)
