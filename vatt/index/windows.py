"""Sliding windows over whole files, decoded a stretch at a time in DataLoader workers.

A file is cut into windows of the model's clip length (`vatt.configs.InputSpec`: e.g. 32 frames at 10 fps
= 3.2 s) starting every `stride_s` seconds, on the frame grid (a start is a whole number of frames), plus a last
window that ends at the end of the file so the tail is covered. A file shorter than one clip gives one
window at 0 whose frames are looped and audio repeated, as `vatt.embed` pads short files.

Each file is decoded once: its windows are grouped into segments of consecutive windows, and one
`decode_clip` call decodes a segment's whole span (video frames at `fps` and the audio with them); the
windows are then slices of that span. Frames are scaled by the decoder (`short_side`) before the
evaluation transform's resize and centre crop (`vatt.data.transforms.eval_video_transform`), which
keeps long spans small in memory; `vatt embed` resizes full-size frames instead, so the two agree
closely but not bit for bit.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vatt.data import decoding, transforms
from vatt.data.errors import MediaError
from vatt.configs import InputSpec

THUMBNAIL_HEIGHT = 96


def window_starts(duration_s: float, clip_s: float, stride_s: float, fps: float) -> list[int]:
    """Start frames (at `fps`) of the windows of a file: every `stride_s` seconds, plus one ending at the end."""
    if not stride_s > 0:
        raise ValueError(f"stride must be > 0 seconds, got {stride_s}")
    max_start = int(math.floor((max(0.0, duration_s - clip_s)) * fps + 1e-6))
    step = stride_s * fps
    starts, k = [], 0
    while True:
        s = int(round(k * step))
        if s > max_start:
            break
        if not starts or s > starts[-1]:
            starts.append(s)
        k += 1
    if starts[-1] < max_start:
        starts.append(max_start)
    return starts


@dataclass
class Segment:
    """Consecutive windows of one file, decoded together."""

    file: int  # index in the build's file list
    path: str
    part: int  # segment number in the file
    num_parts: int
    windows: list[int]  # window numbers
    starts: list[int]  # their start frames
    has_video: bool
    has_audio: bool
    audio_end_s: float | None  # where the file's audio ends (for padding windows past it)


def plan_segments(file: int, path: str, info: decoding.MediaInfo, spec: InputSpec, stride_s: float,
                  can_video: bool, can_audio: bool, windows_per_segment: int = 16) -> list[Segment]:
    has_video = can_video and info.has_video
    has_audio = can_audio and info.has_audio
    if not (has_video or has_audio):
        raise MediaError(path, "no_video_stream" if can_video else "no_audio_stream",
                         f"no {'video or audio' if can_video and can_audio else 'usable'} stream to index")
    clip_s = spec.video_seconds if has_video else spec.audio_seconds
    duration = info.duration_s or 0.0
    starts = window_starts(duration, clip_s, stride_s, spec.fps)
    groups = [list(range(i, min(i + windows_per_segment, len(starts))))
              for i in range(0, len(starts), windows_per_segment)]
    return [Segment(file=file, path=path, part=p, num_parts=len(groups), windows=g, starts=[starts[w] for w in g],
                    has_video=has_video, has_audio=has_audio, audio_end_s=info.audio_duration_s)
            for p, g in enumerate(groups)]


def _thumbnail(frame: np.ndarray) -> bytes:
    img = Image.fromarray(frame)
    w = max(1, round(img.width * THUMBNAIL_HEIGHT / img.height))
    img = img.resize((w, THUMBNAIL_HEIGHT), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _audio_windows(audio: torch.Tensor, offsets: list[int], n: int, real: int) -> torch.Tensor:
    """Windows of `n` samples from `offsets`; a window past the real audio repeats what it has (loop pad)."""
    out = []
    for o in offsets:
        w = audio[o:o + n]
        have = max(0, min(n, real - o))
        if have == 0:
            w = audio[max(0, real - n):real] if real > 0 else torch.zeros(n)
            have = w.shape[0]
        if have < n:
            w = w[:have].repeat(math.ceil(n / have))[:n]
        out.append(w)
    return torch.stack(out)


class SegmentDataset(torch.utils.data.Dataset):
    """Item i: segment i decoded -> {"video": [W, T, S, S, 3] in [-1, 1] or None, "audio": [W, N] or None,
    "audio_mask": [W], "thumbnails": [bytes] or None, "error": MediaError or None}."""

    def __init__(self, segments: list[Segment], spec: InputSpec):
        self.segments, self.spec = segments, spec

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, i: int) -> dict:
        seg = self.segments[i]
        try:
            return {"segment": i, "error": None, **self._load(seg)}
        except MediaError as err:
            return {"segment": i, "error": err}

    def _load(self, seg: Segment) -> dict:
        spec = self.spec
        first, last = seg.starts[0], seg.starts[-1]
        t0 = first / spec.fps
        rate = spec.sample_rate or decoding.REF_SAMPLE_RATE
        per_frame = rate / spec.fps
        n_audio = spec.audio_samples or 0
        span_samples = int(round((last - first) * per_frame)) + n_audio
        offsets = [int(round((s - first) * per_frame)) for s in seg.starts]
        video = thumbs = audio = None
        if seg.has_video:
            num = last - first + spec.num_frames
            clip = decoding.decode_clip(seg.path, t0, num, spec.fps, span_samples if seg.has_audio else 0, rate,
                                        decode_audio=seg.has_audio, short_side=spec.size, audio_pad="zeros")
            frames = clip.frames  # [num, H, W, 3] uint8
            mid = spec.num_frames // 2
            thumbs = [_thumbnail(frames[s - first + mid].numpy()) for s in seg.starts]
            span = transforms.eval_video_transform(frames, spec.size)
            video = torch.stack([span[s - first:s - first + spec.num_frames] for s in seg.starts])
            wave = clip.audio if seg.has_audio else None
        elif seg.has_audio:
            wave, _ = decoding.decode_audio(seg.path, t0, span_samples, rate, pad="zeros", require_audio=True)
        if seg.has_audio:
            real = span_samples if seg.audio_end_s is None else int(round((seg.audio_end_s - t0) * rate))
            audio = _audio_windows(wave, offsets, n_audio, max(0, min(span_samples, real)))
        mask = torch.full((len(seg.starts),), 1.0 if seg.has_audio else 0.0)
        return {"video": video, "audio": audio, "audio_mask": mask, "thumbnails": thumbs}
