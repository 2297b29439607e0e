"""A deterministic sample dataset of real encoded media in which sight, sound and words agree.

Each clip shows one coloured shape moving across a tinted background, and its sound and caption
are tied to what is shown:

- **seen**: a `colour` (red, green, blue, yellow) `shape` (circle, square, triangle, cross) moving
  in one of four directions (`motion`: left to right, right to left, upward, downward);
- **heard**: a beeping tone whose pitch follows the colour, whose timbre follows the shape
  (sine, square wave, sawtooth, two-note chord) and whose beat rate follows the motion;
- **said**: a caption naming colour, shape and motion, with varied wording ("a red ball going
  right", "the red circle is sliding to the right with low slow beeps", ...).

So video-audio and video-text contrastive pre-training has real structure to learn, text-to-video
retrieval has a right answer (a caption matches the clips of its colour, shape and motion) and
classification has labels: `label` = "colour shape" (16 classes), plus `motion` (4 classes).

Files are H.264 + AAC in mp4, written with PyAV; the content of clip `i` depends only on
`(seed, i)`, so the bytes are identical whatever the number of worker processes. The manifest
(`manifest.csv`) has the columns `video, caption, label, label_index, colour, shape, motion,
split, duration_s`; `split` is `train` or `test` (every fifth clip is held out).
"""
from __future__ import annotations

import csv
import math
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("left to right", "right to left", "upward", "downward")
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

# Sound tied to sight. Pitches are far enough apart (>= a fifth) to tell apart after AAC at 8 kHz.
PITCH_HZ = {"red": 220.0, "green": 330.0, "blue": 495.0, "yellow": 740.0}
PITCH_WORD = {"red": "low", "green": "mid", "blue": "high", "yellow": "very high"}
BEATS_PER_S = {"left to right": 1.5, "right to left": 2.5, "upward": 4.0, "downward": 6.0}
RHYTHM_WORD = {"left to right": "slow", "right to left": "steady", "upward": "quick", "downward": "rapid"}

# Wording varies so that text retrieval is not string matching; each list is sampled per clip.
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc", "round dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangle shape"),
    "cross": ("cross", "plus sign"),
}
MOTION_PHRASES = {
    "left to right": ("moving left to right", "going right", "sliding to the right", "drifting from left to right"),
    "right to left": ("moving right to left", "going left", "sliding to the left", "drifting from right to left"),
    "upward": ("moving up", "rising", "floating upward", "going from bottom to top"),
    "downward": ("moving down", "falling", "sinking downward", "dropping from top to bottom"),
}
TEMPLATES = (
    "a {colour} {shape} {motion}",
    "{colour} {shape} {motion}",
    "the {colour} {shape} is {motion}",
    "a {colour} {shape} {motion} with {pitch} {rhythm} beeps",
    "you can see a {colour} {shape} {motion} and hear a {pitch} tone",
    "{rhythm} {pitch} beeping while a {colour} {shape} is {motion}",
)

TEST_EVERY = 5  # clip i is held out when i % TEST_EVERY == TEST_EVERY - 1


@dataclass(frozen=True)
class SampleClip:
    """What one sample clip shows, sounds like and says."""

    index: int
    colour: str
    shape: str
    motion: str
    caption: str
    split: str

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def label_index(self) -> int:
        return CLASSES.index(self.label)

    @property
    def filename(self) -> str:
        return f"clip_{self.index:05d}.mp4"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    # Independent streams for description and rendering, so changing one never shifts the other.
    return np.random.default_rng([seed, index, stream])


def describe_clip(index: int, seed: int = 0) -> SampleClip:
    """Attributes and caption of clip `index`.

    Attributes cycle through all 64 colour x shape x motion combinations, so even a handful of
    clips covers every colour and both splits; the wording is drawn at random.
    """
    combo = index % (len(COLOURS) * len(SHAPES) * len(MOTIONS))
    colour = list(COLOURS)[combo % len(COLOURS)]
    shape = SHAPES[(combo // len(COLOURS)) % len(SHAPES)]
    motion = MOTIONS[combo // (len(COLOURS) * len(SHAPES))]
    rng = _rng(seed, index, 0)
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    caption = template.format(
        colour=colour,
        shape=SHAPE_WORDS[shape][rng.integers(len(SHAPE_WORDS[shape]))],
        motion=MOTION_PHRASES[motion][rng.integers(len(MOTION_PHRASES[motion]))],
        pitch=PITCH_WORD[colour],
        rhythm=RHYTHM_WORD[motion],
    )
    split = "test" if index % TEST_EVERY == TEST_EVERY - 1 else "train"
    return SampleClip(index=index, colour=colour, shape=shape, motion=motion, caption=caption, split=split)


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean sprite [size, size] of a shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up
        return (yy >= 0) & (np.abs(xx - c) <= yy / 2)
    if shape == "cross":
        arm = max(size // 3, 1)
        lo, hi = (size - arm) // 2, (size - arm) // 2 + arm
        band_y = (yy >= lo) & (yy < hi)
        band_x = (xx >= lo) & (xx < hi)
        return band_y | band_x
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_video(clip: SampleClip, seed: int = 0, size: int = 64, fps: float = 10.0,
                 duration_s: float = 4.0) -> np.ndarray:
    """Frames uint8 [T, size, size, 3] of the clip: a shape crossing a tinted gradient background."""
    rng = _rng(seed, clip.index, 1)
    num_frames = int(round(duration_s * fps))
    sprite_size = int(rng.integers(max(size // 5, 4), max(size // 3, 5) + 1))
    mask = _shape_mask(clip.shape, sprite_size)
    colour = np.asarray(COLOURS[clip.colour], dtype=np.float32) * rng.uniform(0.85, 1.0)

    # Dark, low-contrast background with a random tint and gradient: varies per clip, never bright
    # enough to be mistaken for the object.
    tint = rng.uniform(10, 70, size=3).astype(np.float32)
    ramp = np.linspace(0.7, 1.3, size, dtype=np.float32)
    ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    background = (tint[None, None, :] * ramp[..., None]).clip(0, 255)
    background = np.broadcast_to(background, (size, size, 3)).astype(np.uint8)

    span = size - sprite_size
    # Travel along the motion axis from one side to the other (with jittered ends), plus a random
    # cross-axis lane and a small wobble.
    start = rng.uniform(0.0, 0.15) * span
    end = rng.uniform(0.85, 1.0) * span
    lane = rng.uniform(0.1, 0.9) * span
    wobble_amp = rng.uniform(0.0, 0.06) * span
    wobble_hz = rng.uniform(0.3, 1.0)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        along = start + (end - start) * progress
        across = lane + wobble_amp * math.sin(2 * math.pi * wobble_hz * t / fps)
        if clip.motion in ("right to left", "upward"):
            along = span - along
        if clip.motion in ("left to right", "right to left"):
            x, y = along, across
        else:
            x, y = across, along
        x0, y0 = int(round(x)), int(round(y))
        frame = frames[t]
        frame[:] = background
        region = frame[y0:y0 + sprite_size, x0:x0 + sprite_size]
        region[mask] = colour.astype(np.uint8)
    return frames


def render_audio(clip: SampleClip, seed: int = 0, sample_rate: int = 16000, duration_s: float = 4.0) -> np.ndarray:
    """Mono waveform float32 [N] in [-1, 1]: beeps whose pitch, timbre and rate follow the clip."""
    rng = _rng(seed, clip.index, 2)
    n = int(round(duration_s * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    f0 = PITCH_HZ[clip.colour] * rng.uniform(0.97, 1.03)
    nyquist_margin = 0.45 * sample_rate
    phase = 2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)

    def harmonics(weights: Callable[[int], float]) -> np.ndarray:
        # Band-limited so a 8 kHz resampling keeps the timbre and nothing aliases.
        out = np.zeros(n)
        k = 1
        while k * f0 < min(nyquist_margin, 3600.0):
            w = weights(k)
            if w:
                out += w * np.sin(k * phase)
            k += 1
        return out

    if clip.shape == "circle":
        tone = np.sin(phase)
    elif clip.shape == "square":  # square wave: odd harmonics 1/k
        tone = harmonics(lambda k: 1.0 / k if k % 2 else 0.0)
    elif clip.shape == "triangle":  # sawtooth: every harmonic 1/k
        tone = harmonics(lambda k: 1.0 / k)
    else:  # cross: two notes a fifth apart
        tone = np.sin(phase) + 0.8 * np.sin(1.5 * phase)
    tone /= np.abs(tone).max() + 1e-9

    beats = BEATS_PER_S[clip.motion] * rng.uniform(0.95, 1.05)
    beat_phase = (t * beats + rng.uniform(0, 1)) % 1.0
    duty = 0.5
    # Raised-cosine beeps: clicks at hard edges would add broadband energy unrelated to the label.
    envelope = np.sqrt(np.clip(np.sin(np.pi * np.minimum(beat_phase / duty, 1.0)), 0.0, None))
    amplitude = rng.uniform(0.25, 0.45)
    noise = rng.normal(0.0, 0.004, size=n)
    return (amplitude * tone * envelope + noise).clip(-1, 1).astype(np.float32)


_AAC_FRAME = 1024  # samples per AAC frame


def _rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> planar YUV 4:2:0 [H*3/2, W], BT.601 limited range (what decoders assume
    for untagged H.264), chroma averaged over 2x2 blocks."""
    x = frame.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape

    def half(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = np.concatenate([y.ravel(), half(cb).ravel(), half(cr).ravel()])
    return np.round(planes).clip(0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray | None, fps: float = 10.0,
              sample_rate: int = 16000, crf: int = 20) -> None:
    """Encode frames uint8 [T, H, W, 3] (H, W even) and mono audio float32 [N] as H.264 + AAC mp4."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 in yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}")
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        # One thread: x264's thread pool start-up costs more than encoding a 64x64 clip. No macroblock
        # tree: with it, the bytes of a clip depended on which clips the process had encoded before.
        video.codec_context.thread_count = 1
        # A key frame every 2 s, as in ordinary web video: seeking and cutting segments need them.
        video.codec_context.gop_size = max(int(round(2 * fps)), 1)
        video.options = {"preset": "veryfast", "crf": str(crf), "x264-params": "no-mbtree=1"}
        stream_audio = None
        if audio is not None:
            stream_audio = container.add_stream("aac", rate=sample_rate)
            stream_audio.layout = "mono"
            # FFmpeg's default AAC search ('twoloop') is ~2x slower and buys nothing for synthetic tones.
            stream_audio.options = {"aac_coder": "fast"}
            stream_audio.bit_rate = 48000
        # Explicit timestamps, fixed-size audio frames and our own RGB -> YUV conversion: with
        # PyAV's (swscale) conversion, unset pts or one long audio frame, a few files in a hundred
        # differed between identical runs.
        time_base = Fraction(1) / video.average_rate
        for t, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(frame), format="yuv420p")
            vf.pts, vf.time_base = t, time_base
            for packet in video.encode(vf):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream_audio is not None:
            audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
            for start in range(0, audio.shape[1], _AAC_FRAME):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + _AAC_FRAME]),
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts = sample_rate, start
                for packet in stream_audio.encode(af):
                    container.mux(packet)
            for packet in stream_audio.encode():
                container.mux(packet)


MANIFEST_COLUMNS = ("video", "caption", "label", "label_index", "colour", "shape", "motion", "split", "duration_s")


@dataclass(frozen=True)
class SampleDataConfig:
    """How the sample clips are rendered (defaults suit the tiny CPU model)."""

    size: int = 64
    fps: float = 10.0
    duration_s: float = 4.0  # > 3.2 s, so a 32-frame window at 10 fps has room to be sampled
    sample_rate: int = 16000  # the loaders resample to what the model wants (48 kHz official, 8 kHz tiny)


def _write_one(args: tuple[str, int, int, SampleDataConfig]) -> dict:
    out_dir, index, seed, cfg = args
    clip = describe_clip(index, seed)
    frames = render_video(clip, seed, cfg.size, cfg.fps, cfg.duration_s)
    audio = render_audio(clip, seed, cfg.sample_rate, cfg.duration_s)
    rel = Path("videos") / clip.filename
    write_mp4(Path(out_dir) / rel, frames, audio, cfg.fps, cfg.sample_rate)
    return {
        "video": rel.as_posix(), "caption": clip.caption, "label": clip.label, "label_index": clip.label_index,
        "colour": clip.colour, "shape": clip.shape, "motion": clip.motion, "split": clip.split,
        "duration_s": f"{len(frames) / cfg.fps:.3f}",
    }


def write_sample_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = 64,
    seed: int = 0,
    config: SampleDataConfig | None = None,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `num_clips` mp4 clips under `out_dir/videos/`, `manifest.csv` and `labels.txt`.

    `num_workers` > 0 encodes in that many processes (same bytes as serial). `progress(done, total)`
    is called after each clip. Returns the manifest path.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    cfg = config or SampleDataConfig()
    if cfg.size % 2:
        raise ValueError(f"size must be even for H.264 yuv420p, got {cfg.size}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), i, seed, cfg) for i in range(num_clips)]
    rows: list[dict] = []
    if num_workers > 0:
        # Chunks of a few clips: less IPC per clip, while keeping both cores busy to the end.
        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(num_workers) as pool:
            for row in pool.imap(_write_one, jobs, chunksize=4):
                rows.append(row)
                if progress:
                    progress(len(rows), num_clips)
    else:
        for job in jobs:
            rows.append(_write_one(job))
            if progress:
                progress(len(rows), num_clips)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    return manifest
