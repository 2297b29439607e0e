"""Decode clips of video and audio from ordinary media files with PyAV (FFmpeg).

The official VATT pipeline reads pre-extracted JPEG frames at a fixed 10 fps and a 48 kHz waveform
from TFRecords (spec §1). We decode the files themselves instead, so this module turns "a clip of T
frames at `fps`, starting at `start_s`" into the same tensors:

- frames `[T, H, W, 3]` uint8 RGB, audio `[N]` float32 mono at `sample_rate`, and `audio_mask`.

Clock. Every time here is in seconds from the container's start time (the earliest start among its
streams), so video and audio of one file share one clock and `start_s=0` is the beginning of the file.

Frame choice. Frame i of a clip shows the source frame on screen at `start_s + i / fps`: the last
decoded frame whose pts is <= that time (nearest previous). This follows the stream's own timestamps,
so variable-frame-rate files work, and it equals DMVR's stride sampling when the source rate is a
multiple of `fps` (25 fps at fps=12.5 picks every 2nd frame, as the official stride 2 does). A target
time before the first frame takes the first frame (there is no earlier one).

Short videos. A clip that runs past the last frame is padded by repeating the frames it did get from
the start (`video_pad="loop"`), as DMVR's `sample_or_pad_sequence_indices(repeat_sequence=True)`
does; `video_pad="last"` repeats the last frame instead. Only a clip that gets no frame at all raises
`MediaError(reason="too_short")`.

Audio. The span `[start_s, start_s + audio_samples / sample_rate)` is resampled to `sample_rate` and
down-mixed to mono (any layout, 5.1 included) by FFmpeg's resampler. A file without a usable audio
stream, or whose audio does not cover the span, gives zeros and `audio_mask = 0.0` (never an error), as
the official loader does for datasets without audio. A silent track still covers the span: mask 1.

Speed. We seek to the key frame before the clip and stop once past its end, so the cost does not grow
with the clip's position in the file. Non-reference frames that cannot be chosen are not decoded at
all (`_NonRefSkipper`; the kept frames are bit-identical to a full decode). Only kept frames are
converted to RGB, through one scaler per clip, and `short_side` lets that scaler shrink them in the
same pass (training resizes to 224 anyway). `bench/decode.py` measures all of this.

Broken seeks. If a seek lands after the clip start, or on a "key frame" that FFmpeg decodes as
corrupt (it happens in real files), we seek one key frame earlier, and after a few tries decode from
the beginning of the file: slower, never wrong.
"""
from __future__ import annotations

import bisect
import gc
import io
import math
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import av
import numpy as np
import torch
import torch.utils.data
from av.video.reformatter import VideoReformatter

from vatt import faults
from vatt.data.errors import MediaError

REF_FPS = 10.0  # official pre-training frame rate (`data/dataloaders.py:REF_FPS`)
REF_SAMPLE_RATE = 48000  # official waveform rate (`REF_SR`)

# Default guard against absurd frame sizes (a 32-frame clip of 8K RGB is ~3 GB). 4096x2304 covers
# DCI 4K and 4K UHD.
DEFAULT_MAX_PIXELS = 4096 * 2304

# Timestamps are converted to float seconds; two times closer than this are equal. Far below any
# frame interval, far above float rounding of seconds-sized values.
_EPS_S = 1e-6
# Audio decoding starts this far before the span so the codec (MDCT overlap) and the resampler's
# filter have context; packets ending earlier are not decoded at all.
_AUDIO_PREROLL_S = 0.25
# Audio may miss this fraction of the span at its ends (codec priming, rounding of the last packet)
# and still count as covering it; the missing samples are zeros.
_AUDIO_GAP_TOLERANCE = 0.02
# When the audio seek lands after the span (files without a precise index), seek again this far
# before the start, then decode from the beginning.
_SEEK_BACKOFF_S = (2.0, 10.0)

# A forked process (a DataLoader worker) must never free a codec context that the parent decoded with
# frame threads: FFmpeg then waits on threads that do not exist in the child, and the worker hangs for
# ever. Such contexts can sit in unreachable reference cycles until the next garbage collection, which
# would then run in the child. So collect in the parent just before any fork, and in the child leave
# everything inherited to the parent (gc.freeze: the child's collector never visits those objects).
os.register_at_fork(before=gc.collect, after_in_child=gc.freeze)
# Video seeks tried before decoding from the beginning of the file (see decode_clip).
_MAX_SEEKS = 3


@dataclass(frozen=True)
class MediaBytes:
    """A media file held in memory (a shard member), decoded through PyAV's file-like input: no temporary
    file. `name` stands for the file in clips and error messages."""

    name: str
    data: bytes

    def __fspath__(self) -> str:  # error messages and `Clip.path` name it like a path
        return self.name


MediaSource = Union[str, "os.PathLike[str]", MediaBytes]


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` learns from a file's headers, without decoding."""

    path: str
    format_name: str
    duration_s: float | None  # container duration (longest stream); None when unknown
    has_video: bool
    has_audio: bool
    video_codec: str | None = None
    fps: float | None = None  # average frame rate
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None  # as stored in the header; None when the container does not say
    video_duration_s: float | None = None
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_duration_s: float | None = None


@dataclass
class Clip:
    """One decoded clip. Times are seconds on the file's clock (see module docstring)."""

    path: str
    start_s: float
    frames: torch.Tensor | None  # [T, H, W, 3] uint8 RGB; None when video was not decoded
    audio: torch.Tensor | None  # [N] float32 mono at `sample_rate`; None when audio was not asked for
    audio_mask: float  # 1.0 if real audio covers the span, else 0.0 (and `audio` is zeros, see audio_pad)
    sample_rate: int
    frame_times: torch.Tensor | None = None  # [T] float64 pts of the source frame shown at each step
    num_padded_frames: int = 0  # trailing frames that repeat earlier ones because the video ended


# --------------------------------------------------------------------------------------------------
# Opening files and picking streams
# --------------------------------------------------------------------------------------------------

def _ffmpeg_detail(err: Exception) -> str:
    # FFmpeg errors repeat the path in str(err); the path is already in MediaError's message.
    return getattr(err, "strerror", None) or str(err)


def _open(path: str | MediaBytes) -> av.container.InputContainer:
    """Open by content (FFmpeg probes the bytes; the extension is not trusted)."""
    faults.point("data.decode")
    if isinstance(path, MediaBytes):
        if not path.data:
            raise MediaError(path.name, "empty_file", "file has 0 bytes")
        try:
            return av.open(io.BytesIO(path.data), mode="r", metadata_errors="ignore")
        except (av.error.FFmpegError, OSError) as err:
            raise MediaError(path.name, "corrupt", f"cannot parse the container ({_ffmpeg_detail(err)})") from None
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MediaError(path, "missing_file", "no such file") from None
    except OSError as err:
        raise MediaError(path, "unreadable", err.strerror or str(err)) from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(path, "unreadable", "is a directory")
    if info.st_size == 0:
        raise MediaError(path, "empty_file", "file has 0 bytes")
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except PermissionError as err:
        raise MediaError(path, "unreadable", _ffmpeg_detail(err)) from None
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(path, "corrupt", f"cannot parse the container ({_ffmpeg_detail(err)})") from None


def _video_stream(container) -> av.video.stream.VideoStream | None:
    for s in container.streams.video:
        # Cover art in mp3/m4a files is a one-picture "video" stream; it is not the file's video.
        if s.disposition & av.stream.Disposition.attached_pic:
            continue
        return s
    return None


def _audio_stream(container) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def _origin_s(container) -> float:
    # container.start_time is in AV_TIME_BASE units (microseconds); None when no stream knows it.
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _stream_start_s(stream, origin_s: float) -> float:
    if stream.start_time is None:
        return 0.0
    return float(stream.start_time * stream.time_base) - origin_s


def _stream_duration_s(stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _codec_name(stream) -> str | None:
    return stream.codec_context.name if stream.codec_context is not None else None


def probe(path: MediaSource) -> MediaInfo:
    """Read stream facts from the headers (no decoding). Raises MediaError for unusable files."""
    source, path = _source(path)
    with _open(source) as container:
        v = _video_stream(container)
        a = _audio_stream(container)
        duration = container.duration / av.time_base if container.duration is not None else None
        info = dict(path=path, format_name=container.format.name, duration_s=duration,
                    has_video=v is not None, has_audio=a is not None)
        if v is not None:
            ctx = v.codec_context
            rate = v.average_rate or v.guessed_rate
            info.update(
                video_codec=_codec_name(v),
                fps=float(rate) if rate else None,
                width=ctx.width if ctx is not None else None,
                height=ctx.height if ctx is not None else None,
                num_frames=v.frames or None,
                video_duration_s=_stream_duration_s(v),
            )
        if a is not None:
            ctx = a.codec_context
            info.update(
                audio_codec=_codec_name(a),
                audio_sample_rate=(ctx.sample_rate or None) if ctx is not None else None,
                audio_channels=(ctx.layout.nb_channels or None) if ctx is not None else None,
                audio_duration_s=_stream_duration_s(a),
            )
        if info["duration_s"] is None:
            # Some containers (raw streams) only know per-stream durations.
            known = [d for d in (info.get("video_duration_s"), info.get("audio_duration_s")) if d]
            info["duration_s"] = max(known) if known else None
        return MediaInfo(**info)


@lru_cache(maxsize=1 << 16)
def file_duration(path: str) -> float:
    """`probe(path).duration_s` (0 if unknown), cached per process: datasets whose rows give no end time
    probe each file once per worker."""
    return probe(path).duration_s or 0.0


# --------------------------------------------------------------------------------------------------
# Clip windows
# --------------------------------------------------------------------------------------------------

def sample_start(duration_s: float, clip_s: float, rng: torch.Generator | None = None,
                 mode: str = "random", num_windows: int = 1) -> list[float]:
    """Start times (seconds) of clips of length `clip_s` in a file of length `duration_s`.

    The continuous-time form of DMVR's samplers (`processors.py`):
    - "random": `num_windows` independent starts, uniform in [0, duration - clip] (training);
    - "center": the middle window (`sample_sequence(random=False)`; linear-probe train features);
    - "linspace": `num_windows` linearly spaced starts from 0 to duration - clip, both ends included
      (`sample_linspace_sequence`; the official test protocol uses 4). With num_windows=1 this is
      [0.0], as tf.linspace gives.
    A file shorter than the clip gives 0.0 (the clip is then padded, see `decode_clip`).
    """
    if num_windows < 1:
        raise ValueError(f"num_windows must be >= 1, got {num_windows}")
    if not (duration_s >= 0 and clip_s >= 0):
        raise ValueError(f"duration_s and clip_s must be >= 0, got {duration_s} and {clip_s}")
    max_start = max(0.0, float(duration_s) - float(clip_s))
    if mode == "random":
        u = torch.rand(num_windows, generator=rng, dtype=torch.float64)
        return (u * max_start).tolist()
    if mode == "center":
        return [max_start / 2.0] * num_windows
    if mode == "linspace":
        return torch.linspace(0.0, max_start, num_windows, dtype=torch.float64).tolist()
    raise ValueError(f"mode must be 'random', 'center' or 'linspace', got {mode!r}")


# --------------------------------------------------------------------------------------------------
# Decoding passes
# --------------------------------------------------------------------------------------------------

def _tb(time_base) -> float | None:
    # Time bases as floats, taken once per stream: PyAV builds a new Fraction on every access of
    # frame.time_base / packet.time_base, a measurable share of the Python time per clip.
    return float(time_base) if time_base else None


class _DecodeErrors:
    """Counts packets the decoder rejected; FFmpeg conceals most damage, we skip the rest."""

    def __init__(self):
        self.count = 0
        self.last: str | None = None

    def decode(self, packet) -> list:
        try:
            return packet.decode()
        except (av.error.InvalidDataError, av.error.UndefinedError, av.error.PatchWelcomeError,
                av.error.BugError) as err:  # damaged data, not a bug of ours
            self.count += 1
            self.last = _ffmpeg_detail(err)
            return []


class _VideoSampler:
    """Keeps, for each target time, the last frame with pts <= target, converting only kept frames."""

    def __init__(self, path: str, targets: np.ndarray, short_side: int | None, max_pixels: int,
                 frame_step_s: float, time_base):
        self.path = path
        self.tb = _tb(time_base)
        self.targets = targets  # [T] float64 seconds, file clock
        self.short_side = short_side
        self.max_pixels = max_pixels
        self.frame_step_s = frame_step_s  # fallback frame duration when the stream does not say
        self.next = 0  # first target still without a frame
        self.prev = None  # (frame, time) of the last frame seen
        self.prev_end = None
        self.first_time: float | None = None
        self.key_time: float | None = None  # pts of the first key frame decoded in this pass
        self.corrupt = False  # a frame from the first key frame on came out flagged corrupt
        self.last_end: float | None = None
        self.out_size: tuple[int, int] | None = None  # (width, height) of the RGB arrays
        self.arrays: list[np.ndarray] = []  # converted frames, in order
        self.times: list[float] = []  # their pts
        self.picked = np.full(len(targets), -1, dtype=np.int64)  # target -> index into arrays
        self._last_converted = None  # the frame object behind arrays[-1]
        # One scaler for the clip: frame.to_ndarray(format=...) builds a new scaler context (with
        # its own thread pool) per frame, which costs more than the conversion itself.
        self.reformatter = VideoReformatter()
        self.done = False

    def _frame_time(self, frame) -> float:
        tb = self.tb if self.tb is not None else _tb(frame.time_base)
        ts = frame.pts if frame.pts is not None else frame.dts
        if ts is not None and tb is not None:
            return ts * tb
        # No timestamp at all (rare raw streams): continue from the previous frame.
        return self.prev[1] + self.frame_step_s if self.prev is not None else 0.0

    def _convert(self, frame) -> np.ndarray:
        if frame.width * frame.height > self.max_pixels:
            raise MediaError(self.path, "too_large",
                             f"frame is {frame.width}x{frame.height}, above max_pixels={self.max_pixels}")
        if self.out_size is None:
            w, h = frame.width, frame.height
            if self.short_side is not None and min(w, h) > self.short_side:
                # Only ever shrink; a smaller source is left to the transforms to upscale.
                scale = self.short_side / min(w, h)
                w, h = max(1, round(w * scale)), max(1, round(h * scale))
            self.out_size = (w, h)
        w, h = self.out_size
        # Scaling also happens when the resolution changes mid-stream, so frames stack.
        rgb = self.reformatter.reformat(frame, width=w, height=h, format="rgb24", threads=1)
        return rgb.to_ndarray()  # [H, W, 3] uint8

    def _assign(self, i: int, frame, t: float) -> None:
        if frame is not self._last_converted:
            self.arrays.append(self._convert(frame))
            self.times.append(t)
            self._last_converted = frame
        self.picked[i] = len(self.arrays) - 1

    def feed(self, frame) -> None:
        t = self._frame_time(frame)
        if self.first_time is None:
            self.first_time = t
        if self.key_time is None and frame.key_frame:
            self.key_time = t
        # Leading pictures of an open GOP (shown before its key frame) may be corrupt after a seek
        # without harm; from the key frame on, corruption spreads to the frames we keep.
        if frame.is_corrupt and self.key_time is not None and t >= self.key_time:
            self.corrupt = True
        n = len(self.targets)
        while self.next < n and t > self.targets[self.next] + _EPS_S:
            src, src_t = self.prev if self.prev is not None else (frame, t)
            self._assign(self.next, src, src_t)
            self.next += 1
        if self.next == n:
            self.done = True
            return
        duration = frame.duration * self.tb if frame.duration and self.tb else 0.0
        self.prev = (frame, t)
        self.prev_end = t + (duration if duration > 0 else self.frame_step_s)
        self.last_end = self.prev_end

    def seek_failed(self) -> bool:
        """After a seek: landed after the first target, or on a key frame that did not decode."""
        return self.corrupt or (self.first_time is not None and self.first_time > self.targets[0] + _EPS_S)

    def finish(self) -> None:
        """End of stream: the last frame stays on screen until its end time."""
        n = len(self.targets)
        while self.prev is not None and self.next < n and self.targets[self.next] < self.prev_end - _EPS_S:
            self._assign(self.next, *self.prev)
            self.next += 1
        self.done = True


class _AudioCollector:
    """Decoded audio over [t0, t0 + n / rate), resampled to mono float32 at `rate`."""

    def __init__(self, t0: float, num_samples: int, sample_rate: int, time_base):
        self.tb = _tb(time_base)
        self.t0 = t0
        self.n = num_samples
        self.sr = sample_rate
        self.t_end = t0 + num_samples / sample_rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.first_time: float | None = None
        self.fed_end: float | None = None
        self.done = num_samples == 0

    def wants(self, packet) -> bool:
        # Skip decoding packets that end well before the span (the video's key frame may be seconds
        # earlier); a packet without timing is decoded.
        if packet.pts is None or not packet.duration or self.tb is None:
            return True
        return (packet.pts + packet.duration) * self.tb >= self.t0 - _AUDIO_PREROLL_S

    def feed(self, frame) -> None:
        if self.done or frame.samples == 0:
            return
        dur = frame.samples / frame.sample_rate
        t = frame.pts * self.tb if frame.pts is not None and self.tb is not None else None
        if t is None:
            # Untimed frames: assume the audio is contiguous.
            t = self.fed_end if self.fed_end is not None else 0.0
        if self.first_time is None:
            if t + dur < self.t0 - _AUDIO_PREROLL_S / 2:
                return
            self.first_time = t
        # Samples are taken as contiguous from `first_time`: gaps inside a stream are not filled.
        self._take(self.resampler.resample(frame))
        self.fed_end = (self.fed_end if self.fed_end is not None else t) + dur
        if self.fed_end >= self.t_end + _AUDIO_PREROLL_S / 2:
            self.done = True

    def _take(self, frames) -> None:
        for out in frames:
            # Packed float mono: the plane is the samples. A view, not a copy: result() concatenates.
            self.chunks.append(np.frombuffer(out.planes[0], dtype=np.float32, count=out.samples))

    def starts_late(self) -> bool:
        return self.first_time is not None and self.first_time > self.t0 + _AUDIO_GAP_TOLERANCE * (self.t_end - self.t0)

    def result(self, pad: str) -> tuple[np.ndarray, float]:
        """Exactly n samples and the audio mask."""
        if self.n == 0:
            return np.zeros(0, np.float32), 1.0
        if self.first_time is None:
            return np.zeros(self.n, np.float32), 0.0
        self._take(self.resampler.resample(None))  # flush what the resampler holds back
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        offset = int(round((self.t0 - self.first_time) * self.sr))  # > 0: skip; < 0: audio starts late
        lead = max(0, -offset)
        got = pcm[max(0, offset):max(0, offset) + self.n - lead]
        missing = self.n - got.size
        if got.size == 0:
            return np.zeros(self.n, np.float32), 0.0
        if missing <= _AUDIO_GAP_TOLERANCE * self.n or pad == "zeros":
            out = np.zeros(self.n, np.float32)
            out[lead:lead + got.size] = got
            return out, 1.0
        if pad == "loop":
            return np.resize(got, self.n).astype(np.float32, copy=False), 1.0  # np.resize tiles
        return np.zeros(self.n, np.float32), 0.0


def _h264_nal_length_size(stream) -> int | None:
    """NAL length-prefix size of an H.264 stream (4 in mp4/mkv), 0 for Annex B start codes, None
    if the stream is not H.264."""
    ctx = stream.codec_context
    if ctx is None or ctx.name != "h264":
        return None
    extradata = ctx.extradata
    if extradata and len(extradata) >= 5 and extradata[0] == 1:  # avcC record
        return (extradata[4] & 3) + 1
    return 0


def _h264_is_reference(packet, nal_length_size: int) -> bool | None:
    """Whether the packet's picture is a reference (nal_ref_idc of its first slice), None if unknown."""
    data = memoryview(packet)
    if nal_length_size:
        i, n = 0, len(data)
        while i + nal_length_size < n:
            size = int.from_bytes(data[i:i + nal_length_size], "big")
            header = data[i + nal_length_size]
            if header & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
                return bool(header & 0x60)
            i += nal_length_size + size
        return None
    raw = data.tobytes()
    i = raw.find(b"\x00\x00\x01")
    while 0 <= i < len(raw) - 3:
        header = raw[i + 3]
        if header & 0x1F in (1, 5):
            return bool(header & 0x60)
        i = raw.find(b"\x00\x00\x01", i + 3)
    return None


class _NonRefSkipper:
    """Chooses, per video packet, whether the decoder may drop it if it is a non-reference frame.

    A frame with pts p is shown at some target only if no later frame comes before that target. So
    if a frame q > p is certain to be decoded and no target falls in [p, q), frame p is never chosen;
    if it is also a non-reference frame, no other frame needs it, and the decoder may skip it
    (`skip_frame="NONREF"`): less work, the same pixels in every frame we keep. With B-frames the
    frames shown after a B-frame are demuxed before it, so q is known in time. For H.264 the
    packet's NAL header says whether it is a reference, so the certainly-decoded set is exact and
    q is usually the very next frame: about half the frames before the clip and a third inside it
    are skipped in x264 streams. Other codecs get the conservative form (q only from packets sent
    without skipping); a decoder that ignores skip_frame decodes everything.
    """

    def __init__(self, targets: np.ndarray, stream):
        self.targets = targets
        self.tb = _tb(stream.time_base)
        self.nal_length_size = _h264_nal_length_size(stream)
        self.decoded: list[float] = []  # sorted pts (seconds) of frames certain to be decoded

    def _unneeded(self, p: float) -> bool:
        k = bisect.bisect_right(self.decoded, p)
        if k == len(self.decoded):
            return False
        q = self.decoded[k]
        return bisect.bisect_left(self.targets, p - _EPS_S) == bisect.bisect_left(self.targets, q - _EPS_S)

    def mode(self, packet) -> str:
        if packet.pts is None or self.tb is None:
            return "DEFAULT"
        p = packet.pts * self.tb
        if packet.is_keyframe:
            is_ref = True
        elif self.nal_length_size is not None:
            is_ref = _h264_is_reference(packet, self.nal_length_size)
        else:
            is_ref = None
        if is_ref is not True and self._unneeded(p):
            return "NONREF"  # skipped if non-reference; if it is one after all it is decoded anyway
        bisect.insort(self.decoded, p)  # a reference, or sent without skipping: decoded
        return "DEFAULT"


def _check_decodable(path: str, stream, kind: str) -> None:
    if stream.codec_context is None:
        raise MediaError(path, "unsupported_codec",
                         f"no decoder for {kind} stream #{stream.index} in this FFmpeg build")


def _set_threads(stream, threads: int | None) -> None:
    if threads is None:
        # Inside a DataLoader worker the other workers already use the cores (more threads only
        # add memory and switching); in a single process, frame threading uses the idle ones.
        threads = 1 if torch.utils.data.get_worker_info() is not None else 0
    if threads == 1:
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
    else:
        stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = threads  # 0: FFmpeg picks (one per core)


def _seek(container, stream, t_s: float) -> None:
    # Backward: land on the key frame at or before t_s; the caller decodes forward from there.
    container.seek(int(math.floor(t_s / stream.time_base)), stream=stream, backward=True)


def _demux(container, streams, on_packet, errors: _DecodeErrors) -> bool:
    """Feed packets to `on_packet` until it returns True (done) or the file ends; True if it ended."""
    try:
        for packet in container.demux(streams):
            if on_packet(packet):
                return False
    except av.error.EOFError:
        pass
    except av.error.InvalidDataError as err:
        # A demuxer that hits damaged or truncated data ends the stream here; what was decoded stays.
        errors.count += 1
        errors.last = _ffmpeg_detail(err)
    return True


def _video_pass(path, container, targets_abs, audio_t0, num_audio, sample_rate, *, decode_audio,
                short_side, max_pixels, threads, seek_s, skip_nonref=True):
    """One seek + decode over the clip. Returns (video sampler, audio collector or None, errors)."""
    v = _video_stream(container)
    a = _audio_stream(container) if decode_audio else None
    if a is not None and a.codec_context is None:
        a = None  # an undecodable audio track counts as no audio
    _set_threads(v, threads)
    rate = v.average_rate or v.guessed_rate
    sampler = _VideoSampler(path, targets_abs, short_side, max_pixels, 1.0 / float(rate) if rate else 0.04,
                            v.time_base)
    audio = _AudioCollector(audio_t0, num_audio, sample_rate, a.time_base) if a is not None else None
    errors = _DecodeErrors()
    skipper = _NonRefSkipper(targets_abs, v) if skip_nonref else None
    ctx = v.codec_context
    if seek_s is not None:
        _seek(container, v, seek_s)

    def on_packet(packet) -> bool:
        if packet.stream is v:
            if not sampler.done:
                if skipper is not None:
                    ctx.skip_frame = skipper.mode(packet)
                for frame in errors.decode(packet):
                    sampler.feed(frame)
                    if sampler.done:
                        break
                if seek_s is not None and sampler.seek_failed():
                    return True  # the caller seeks again; decoding further is wasted
        elif audio is not None and not audio.done and audio.wants(packet):
            for frame in errors.decode(packet):
                audio.feed(frame)
        return sampler.done and (audio is None or audio.done)

    if _demux(container, [s for s in (v, a) if s is not None], on_packet, errors) and not sampler.seek_failed():
        sampler.finish()
    return sampler, audio, errors


def _audio_pass(container, t0, num_samples, sample_rate, seek_s):
    a = _audio_stream(container)
    audio = _AudioCollector(t0, num_samples, sample_rate, a.time_base)
    errors = _DecodeErrors()
    if seek_s is not None:
        _seek(container, a, seek_s)

    def on_packet(packet) -> bool:
        if audio.wants(packet):
            for frame in errors.decode(packet):
                audio.feed(frame)
        return audio.done

    _demux(container, [a], on_packet, errors)
    return audio


def _decode_audio_span(path, container, t0_abs, num_samples, sample_rate, origin_s) -> _AudioCollector:
    """Audio over a span with its own seek; seeks again earlier, then from the start, if it lands late."""
    a = _audio_stream(container)
    start_abs = _stream_start_s(a, origin_s) + origin_s
    seeks = [t0_abs - _AUDIO_PREROLL_S - back for back in (0.0,) + _SEEK_BACKOFF_S]
    seeks = [s for s in seeks if s > start_abs] + [None]
    for i, seek_s in enumerate(seeks):
        if i > 0:
            container.close()
            container = _open(path)
        audio = _audio_pass(container, t0_abs, num_samples, sample_rate, seek_s)
        if not audio.starts_late() or seek_s is None:
            break
    container.close()
    return audio


def _source(path: MediaSource) -> tuple[str | MediaBytes, str]:
    """(what `_open` opens, the name messages use) of a path or a `MediaBytes`."""
    if isinstance(path, MediaBytes):
        return path, path.name
    path = os.fspath(path)
    return path, path


def _check_pad_mode(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def decode_clip(path: MediaSource, start_s: float, num_frames: int = 32, fps: float = REF_FPS,
                audio_samples: int = 153600, sample_rate: int = REF_SAMPLE_RATE, *,
                decode_video: bool = True, decode_audio: bool = True, short_side: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, video_pad: str = "loop", audio_pad: str = "mask",
                threads: int | None = None) -> Clip:
    """Decode `num_frames` frames at `fps` and `audio_samples` samples at `sample_rate` from `start_s`.

    Defaults are the official pre-training clip: 32 frames at 10 fps (3.2 s) and 153 600 samples at
    48 kHz (3.2 s). The official evaluation's "stride 2 on 25 fps" is `fps=12.5`.

    Args:
      start_s: clip start in seconds from the start of the file (see `sample_start`).
      decode_video / decode_audio: skip a modality entirely (its field in the Clip is None).
      short_side: if given, frames whose shorter side is larger are scaled down (aspect kept) by the
        decoder's scaler while converting to RGB. Saves time and memory; not bit-identical to resizing
        full frames with the transforms' bilinear resize.
      max_pixels: frames with more pixels raise MediaError("too_large").
      video_pad: "loop" (DMVR: repeat the frames obtained) or "last" (repeat the last frame) when the
        video ends inside the clip.
      audio_pad: what to do when the audio ends inside the span (or starts after it): "mask" (zeros,
        audio_mask=0, the official treatment of missing audio), "zeros" (real samples, then zeros;
        mask 1), "loop" (repeat the real samples, as DMVR pads sequences; mask 1).
      threads: decoder threads; 0 lets FFmpeg use every core (frame threading). None (default): 1
        inside a DataLoader worker process (the workers already share the cores), else 0.

    Raises MediaError with reason missing_file, unreadable, empty_file, corrupt, no_video_stream,
    unsupported_codec, too_large, too_short. `path` may be a `MediaBytes` (a file in memory).
    """
    source, path = _source(path)
    if start_s < 0 or not math.isfinite(start_s):
        raise ValueError(f"start_s must be a finite time >= 0, got {start_s}")
    if num_frames < 1 or not fps > 0:
        raise ValueError(f"need num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
    if audio_samples < 0 or sample_rate <= 0:
        raise ValueError(f"need audio_samples >= 0 and sample_rate > 0, got {audio_samples}, {sample_rate}")
    _check_pad_mode("video_pad", video_pad, ("loop", "last"))
    _check_pad_mode("audio_pad", audio_pad, ("mask", "zeros", "loop"))

    container = _open(source)
    try:
        origin = _origin_s(container)
        v = _video_stream(container)
        a = _audio_stream(container)
        if decode_video:
            if v is None:
                kinds = sorted({s.type for s in container.streams}) or ["no"]
                raise MediaError(path, "no_video_stream",
                                 f"{container.format.name} file with {'/'.join(kinds)} streams only")
            _check_decodable(path, v, "video")
            ctx = v.codec_context
            if ctx.width * ctx.height > max_pixels:
                raise MediaError(path, "too_large",
                                 f"video is {ctx.width}x{ctx.height}, above max_pixels={max_pixels}")
    except BaseException:
        container.close()
        raise

    audio_t0 = origin + start_s
    clip = Clip(path=path, start_s=float(start_s), frames=None, audio=None, audio_mask=0.0,
                sample_rate=sample_rate)
    audio: _AudioCollector | None = None
    want_audio = decode_audio and a is not None and a.codec_context is not None

    if decode_video:
        targets = origin + start_s + np.arange(num_frames, dtype=np.float64) / fps
        v_start = _stream_start_s(v, origin) + origin
        # Seek only when the clip starts after the stream does. A seek can land after the clip start
        # (imprecise index, open GOP) or on a "key frame" that does not decode on its own (FFmpeg
        # flags it corrupt; seen in real files); then seek again to just before the frame we landed
        # on, i.e. one key frame earlier, and after _MAX_SEEKS tries decode from the start.
        seek_s = targets[0] if targets[0] > v_start + _EPS_S else None
        for attempt in range(1, _MAX_SEEKS + 2):
            if attempt > 1:
                container.close()
                container = _open(source)
            try:
                sampler, audio, errors = _video_pass(
                    path, container, targets, audio_t0, audio_samples, sample_rate,
                    decode_audio=want_audio, short_side=short_side, max_pixels=max_pixels,
                    threads=threads, seek_s=seek_s)
            except BaseException:
                container.close()
                raise
            if seek_s is None or not sampler.seek_failed():
                break
            seek_s = min(seek_s, sampler.first_time) - 1e-3
            if attempt >= _MAX_SEEKS or seek_s <= v_start + _EPS_S:
                seek_s = None
        num_valid = int((sampler.picked >= 0).sum())
        if num_valid == 0:
            container.close()
            if sampler.first_time is None:
                why = f" (last decoder error: {errors.last})" if errors.last else ""
                raise MediaError(path, "corrupt", f"no video frame could be decoded{why}")
            raise MediaError(path, "too_short",
                             f"clip starts at {start_s:.3f} s but the video ends at "
                             f"{sampler.last_end - origin:.3f} s")
        # picked is filled in order, so the valid targets are a prefix.
        idx = sampler.picked[:num_valid]
        if num_valid < num_frames:
            pad = np.arange(num_valid, num_frames)
            idx = np.concatenate([idx, idx[pad % num_valid] if video_pad == "loop"
                                  else np.full(pad.size, idx[-1])])
        stacked = np.stack([sampler.arrays[j] for j in idx])  # [T, H, W, 3]
        clip.frames = torch.from_numpy(stacked)
        clip.frame_times = torch.tensor([sampler.times[j] - origin for j in idx], dtype=torch.float64)
        clip.num_padded_frames = num_frames - num_valid
        if audio is not None and audio.starts_late():
            audio = None  # the video's seek position did not reach the audio span: seek for audio

    if want_audio and audio is None:
        audio = _decode_audio_span(source, container, audio_t0, audio_samples, sample_rate, origin)
    container.close()

    if decode_audio:
        if audio is None:
            clip.audio, clip.audio_mask = torch.zeros(audio_samples, dtype=torch.float32), 0.0
        else:
            pcm, mask = audio.result(audio_pad)
            clip.audio, clip.audio_mask = torch.from_numpy(pcm), mask
    return clip


def decode_audio(path: MediaSource, start_s: float, num_samples: int,
                 sample_rate: int = REF_SAMPLE_RATE, *, pad: str = "mask",
                 require_audio: bool = False, stride: int = 1) -> tuple[torch.Tensor, float]:
    """Mono float32 audio `[num_samples]` at `sample_rate` from `start_s`, and its mask.

    Works on audio files (wav, flac, ogg, mp3, ...) and on the audio track of video files, on the same
    clock as `decode_clip`. `stride` keeps every stride-th sample of `num_samples · stride` decoded at
    `sample_rate`, without a low-pass filter: the official audio fine-tuning input (153 600 samples at
    stride 2 of 48 kHz, i.e. 6.4 s) is `sample_rate=48000, stride=2`. (`sample_rate=24000` instead
    resamples with FFmpeg's filter: the same span, without the aliasing of plain decimation.)

    `pad` is as `decode_clip`'s `audio_pad`. A file without (decodable) audio gives zeros and mask 0.0,
    or raises MediaError("no_audio_stream" / "unsupported_codec") when `require_audio`.
    """
    source, path = _source(path)
    if start_s < 0 or not math.isfinite(start_s):
        raise ValueError(f"start_s must be a finite time >= 0, got {start_s}")
    if num_samples < 0 or sample_rate <= 0 or stride < 1:
        raise ValueError(f"need num_samples >= 0, sample_rate > 0 and stride >= 1, got {num_samples}, {sample_rate}, "
                         f"{stride}")
    _check_pad_mode("pad", pad, ("mask", "zeros", "loop"))
    container = _open(source)
    a = _audio_stream(container)
    if a is None or a.codec_context is None:
        container.close()
        if require_audio:
            if a is None:
                raise MediaError(path, "no_audio_stream", f"{container.format.name} file without audio")
            raise MediaError(path, "unsupported_codec", f"no decoder for audio stream #{a.index}")
        return torch.zeros(num_samples, dtype=torch.float32), 0.0
    origin = _origin_s(container)
    audio = _decode_audio_span(source, container, origin + start_s, num_samples * stride, sample_rate, origin)
    pcm, mask = audio.result(pad)
    return torch.from_numpy(np.ascontiguousarray(pcm[::stride])), mask
