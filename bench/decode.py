"""Clip decoding speed: `vatt.data.decoding.decode_clip` against bare PyAV.

Writes a long H.264 + AAC video (default 5 minutes, 640x360, 25 fps, a key frame every 3 s) to a
temporary folder, then measures clips per second for a random 3.2 s clip (32 frames at 10 fps):

  (a) ours:       decode_clip, then the [-1, 1] normalisation of a 224^2 crop, as training does it (video
                  only, and video + 48 kHz audio): decode_clip gives uint8 frames and every transform
                  (pre-training, fine-tuning, evaluation) normalises only after its crop; (a0) the
                  normalisation of the full 640x360 clip instead (what this bench measured before; no
                  caller does it), (a1) without any normalisation, (a2) with the decoder scaling to a 224
                  shorter side
  (b) bare PyAV:  seek to the key frame before the clip, decode the span, convert only the kept frames
                  to rgb24 with one scaler context (the least work that gives the same frames; audio:
                  decode + resample the span); (b0) the same with plain frame.to_ndarray(format="rgb24")
  (c) from start: decode from the beginning of the file up to the clip (no seek)

with 1 and 2 DataLoader worker processes (decoders single-threaded, as decode_clip runs in workers),
and the cost of one clip against its position in the file. Workers return a checksum, not the frames,
so the figures are decoding cost, not inter-process copies. On a shared machine wall-clock figures
move with other load; the paired ratios (A and B timed back to back on each clip, wall and CPU time)
are the ones to compare.

    python bench/decode.py                         # full run, a few minutes on 2 cores
    python bench/decode.py --minutes 1 --clips 12  # quick run
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from av.video.reformatter import VideoReformatter  # noqa: E402

from vatt.data.decoding import decode_clip  # noqa: E402
from vatt.data.transforms import normalize_frames  # noqa: E402

NUM_FRAMES, FPS, AUDIO_SAMPLES, SR = 32, 10.0, 153600, 48000
CLIP_S = NUM_FRAMES / FPS


# --------------------------------------------------------------------------------------------------
# Test video
# --------------------------------------------------------------------------------------------------

def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random texture twice the frame size (so it can pan), [2H, 4W, 3] uint8."""
    small = rng.integers(0, 256, (2 * h // 16, 2 * w // 8, 3)).astype(np.float32)
    tex = np.kron(small, np.ones((16, 8, 1), np.float32))
    kernel = np.ones(9, np.float32) / 9
    for axis in (0, 1):
        tex = np.apply_along_axis(lambda m: np.convolve(m, kernel, mode="same"), axis, tex)
    return np.concatenate([tex, tex], axis=1).astype(np.uint8)


def write_segment(path: str, seconds: float, width: int, height: int, fps: int, gop: int) -> None:
    """Encode `seconds` of panning texture with film grain and a moving block, plus a stereo tone."""
    rng = np.random.default_rng(0)
    tex = _texture(height, width, rng)
    grain = rng.integers(-6, 7, (8, height, width, 3)).astype(np.int16)
    out = av.open(path, "w")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = width, height, "yuv420p"
    # Fixed GOP (closed, no scene-cut key frames) so segments can be joined at key frames.
    v.options = {"preset": "veryfast", "crf": "23", "g": str(gop), "keyint_min": str(gop),
                 "sc_threshold": "0", "open_gop": "0"}
    a = out.add_stream("aac", rate=SR)
    a.layout = "stereo"
    apos = 0
    for i in range(int(seconds * fps)):
        x = (i * 3) % (2 * width)
        y = int(height / 2 * (1 + np.sin(i / 50)))
        img = tex[y:y + height, x:x + width].astype(np.int16) + grain[i % 8]
        bx = (i * 5) % (width - 60)
        img[40:100, bx:bx + 60] = 255
        frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
        frame.pts = i
        for p in v.encode(frame):
            out.mux(p)
        while apos < (i + 1) * SR // fps:
            t = (apos + np.arange(1024)) / SR
            tone = (0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t)))).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = SR, apos, Fraction(1, SR)
            for p in a.encode(af):
                out.mux(p)
            apos += 1024
    for s in (v, a):
        for p in s.encode():
            out.mux(p)
    out.close()


def write_long_video(path: str, minutes: float, width=640, height=360, fps=25, gop_s=3.0,
                     segment_s=30.0) -> None:
    """Encode one segment, then join copies of its packets (shifted in time) up to `minutes`.

    Encoding 5 minutes frame by frame takes minutes on 2 cores; joining encoded segments takes
    seconds and gives a file that decodes exactly like a long encode (same codec settings, GOPs).
    """
    gop = int(round(gop_s * fps))
    segment_s = max(gop_s, round(segment_s / gop_s) * gop_s)  # whole GOPs, so joins fall on key frames
    seg_path = path + ".segment.mp4"
    write_segment(seg_path, min(segment_s, minutes * 60), width, height, fps, gop)
    reps = max(1, int(round(minutes * 60 / segment_s)))
    with av.open(seg_path) as src, av.open(path, "w") as dst:
        outs = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        last_dts: dict[int, int] = {}
        for r in range(reps):
            src.seek(0)
            for p in src.demux():
                if p.dts is None:
                    continue
                shift = int(round(r * segment_s / p.time_base))
                p.pts, p.dts = p.pts + shift, p.dts + shift
                # AAC priming overlaps the previous copy's tail by one packet: drop it.
                if p.dts <= last_dts.get(p.stream.index, -(2**62)):
                    continue
                last_dts[p.stream.index] = p.dts
                p.stream = outs[p.stream.index]
                dst.mux(p)
    os.remove(seg_path)


# --------------------------------------------------------------------------------------------------
# The three ways to get a clip
# --------------------------------------------------------------------------------------------------

CROP = 224  # the training crop (vatt.data.transforms.IMAGE_SIZE)


def ours(path: str, start: float, audio: bool = False, threads: int | None = None,
         short_side: int | None = None, normalize: str = "crop") -> float:
    """normalize: "crop" converts a CROP x CROP crop to [-1, 1] floats, as the training transforms do after
    their resize and crop (the resize is the transform's cost, measured in bench/pipeline.py, not
    decoding's); "full" the whole clip; "none" nothing."""
    clip = decode_clip(path, start, NUM_FRAMES, FPS, AUDIO_SAMPLES, SR, decode_audio=audio, threads=threads,
                       short_side=short_side)
    video = clip.frames  # [T, H, W, 3] uint8
    if normalize == "crop":
        video = normalize_frames(video[:, :CROP, :CROP])  # [T, CROP, CROP, 3] in [-1, 1]
    elif normalize == "full":
        video = normalize_frames(video)
    return float(video[0, 0, 0, 0]) + (float(clip.audio[0]) if audio else 0.0)


def _bare_frames(container, v, start: float, seek: bool, naive: bool = False) -> list[np.ndarray]:
    """Nearest-previous frames at start + i/FPS with the least work: rgb24 only for kept frames."""
    if seek:
        container.seek(int(start / v.time_base), stream=v, backward=True)
    # One scaler context for the clip; `naive` uses frame.to_ndarray(format="rgb24") as is, which
    # builds a scaler (and its thread pool) for every frame.
    reformatter = VideoReformatter()

    def rgb(f):
        if naive:
            return f.to_ndarray(format="rgb24")
        return reformatter.reformat(f, format="rgb24", threads=1).to_ndarray()

    targets = start + np.arange(NUM_FRAMES) / FPS
    frames, prev, prev_arr, i = [], None, None, 0
    for f in container.decode(v):
        t = f.time
        while i < NUM_FRAMES and t > targets[i] + 1e-6:
            if prev_arr is None:
                prev_arr = rgb(prev if prev is not None else f)
            frames.append(prev_arr)
            i += 1
        if i == NUM_FRAMES:
            break
        prev, prev_arr = f, None
    return frames


def _open_single_threaded(path: str):
    c = av.open(path)
    v = c.streams.video[0]
    v.thread_type = "SLICE"  # the decoder settings decode_clip uses in a DataLoader worker
    v.codec_context.thread_count = 1
    return c, v


def bare(path: str, start: float, audio: bool = False, naive: bool = False) -> float:
    c, v = _open_single_threaded(path)
    with c:
        frames = _bare_frames(c, v, start, seek=True, naive=naive)
        total = float(frames[0][0, 0, 0])
        if audio:
            a = c.streams.audio[0]
            c.seek(int((start - 0.25) / a.time_base), stream=a, backward=True)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
            chunks, first = [], None
            for f in c.decode(a):
                if f.time + f.samples / f.sample_rate < start - 0.1:
                    continue
                first = f.time if first is None else first
                chunks += [o.to_ndarray()[0] for o in resampler.resample(f)]
                if f.time > start + CLIP_S + 0.1:
                    break
            pcm = np.concatenate(chunks)[int(round((start - first) * SR)):][:AUDIO_SAMPLES]
            total += float(pcm[0])
        return total


def from_start(path: str, start: float) -> float:
    c, v = _open_single_threaded(path)
    with c:
        return float(_bare_frames(c, v, start, seek=False)[0][0, 0, 0])


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------

class _Clips(Dataset):
    def __init__(self, fn, path, starts, kwargs):
        self.fn, self.path, self.starts, self.kwargs = fn, path, starts, kwargs

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        return self.fn(self.path, self.starts[i], **self.kwargs)


def clips_per_s(fn, path, starts, workers: int, **kwargs) -> float:
    """Wall-clock throughput through a DataLoader with `workers` processes (0: the main process),
    worker start-up (a fork, ~0.1 s) included."""
    loader = DataLoader(_Clips(fn, path, starts, kwargs), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    return n / (time.perf_counter() - t0)


class _Paired(Dataset):
    """Each item times method A and method B on the same clip, back to back in alternating order, so
    load from anything else on the machine hits both alike. Wall and CPU time (all threads of the
    worker process) are both kept: CPU time is the cost, and hardly moves with other load."""

    def __init__(self, path, starts, a, b):
        self.path, self.starts, self.a, self.b = path, starts, a, b

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        times = {}
        for name, (fn, kwargs) in (("a", self.a), ("b", self.b))[:: 1 if i % 2 == 0 else -1]:
            wall, cpu = time.perf_counter(), time.process_time()
            fn(self.path, self.starts[i], **kwargs)
            times[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return times["a"] + times["b"]


def paired(path, starts, workers: int, a, b) -> dict[str, float]:
    """Totals over the clips: wall and CPU time ratios A/B, and mean CPU ms per clip of each."""
    loader = DataLoader(_Paired(path, starts, a, b), batch_size=None, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    tot = np.zeros(4)
    for item in loader:
        tot += np.array([float(t) for t in item])
    n = len(starts)
    return {"wall": tot[0] / tot[2], "cpu": tot[1] / tot[3], "cpu_a_ms": 1000 * tot[1] / n,
            "cpu_b_ms": 1000 * tot[3] / n}


def ms_per_clip(fn, path, starts, **kwargs) -> float:
    times = []
    for s in starts:
        t = time.perf_counter()
        fn(path, s, **kwargs)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the test video")
    parser.add_argument("--clips", type=int, default=24, help="random clips per throughput figure")
    parser.add_argument("--repeats", type=int, default=1, help="runs per throughput figure (best is kept)")
    parser.add_argument("--from-start-clips", type=int, default=4,
                        help="clips for (c), which costs seconds per clip late in a long file")
    parser.add_argument("--gop", type=float, default=3.0, help="key frame interval in seconds")
    parser.add_argument("--workdir", default=None, help="keep the test video here (default: a temp dir)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    workdir = args.workdir or tempfile.mkdtemp(prefix="vatt-bench-decode-")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"long_{args.minutes:g}min_gop{args.gop:g}.mp4")
    try:
        if not os.path.exists(path):
            t = time.perf_counter()
            write_long_video(path, args.minutes, gop_s=args.gop)
            print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
        with av.open(path) as c:
            duration = c.duration / av.time_base
            v = c.streams.video[0]
            print(f"video: {duration:.1f} s, {v.codec_context.width}x{v.codec_context.height}, "
                  f"{float(v.average_rate):g} fps, h264 + aac, key frame every {args.gop:g} s; "
                  f"clip: {NUM_FRAMES} frames at {FPS:g} fps + {AUDIO_SAMPLES} samples at {SR} Hz")
        print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, PyAV {av.__version__}")

        rng = np.random.default_rng(0)
        starts = rng.uniform(0, duration - CLIP_S, args.clips).tolist()

        # Same frames both ways, or the comparison means nothing.
        with av.open(path) as c:
            ref = _bare_frames(c, c.streams.video[0], starts[0], seek=True)
        mine = decode_clip(path, starts[0], NUM_FRAMES, FPS, decode_audio=False).frames.numpy()
        assert np.array_equal(np.stack(ref), mine), "decode_clip and bare PyAV disagree"

        methods = {  # name: (label, function, kwargs)
            "a": ("(a)  ours: decode_clip + normalise 224^2 crop", ours, {}),
            "a0": ("(a0) ours: decode_clip + normalise full frames", ours, {"normalize": "full"}),
            "a1": ("(a1) ours: decode_clip only", ours, {"normalize": "none"}),
            "a2": ("(a2) ours: decode_clip(short_side=224) + normalise crop", ours, {"short_side": 224}),
            "b": ("(b)  bare PyAV: seek + decode span + rgb24 kept", bare, {}),
            "b0": ("(b0) bare PyAV, frame.to_ndarray(format='rgb24')", bare, {"naive": True}),
            "a+": ("(a)  ours + audio", ours, {"audio": True}),
            "b+": ("(b)  bare + audio", bare, {"audio": True}),
            "c": ("(c)  from the start of the file (no seek)", from_start, {}),
        }
        print(f"\nthroughput, {args.clips} random clips: clips/s through DataLoader workers "
              f"(best of {args.repeats}; (c) on {args.from_start_clips} clips)")
        print(f"{'':52s} {'1 worker':>9} {'2 workers':>9}")
        rate: dict[tuple[str, int], float] = {}
        for key, (label, fn, kwargs) in methods.items():
            clip_starts = starts[: args.from_start_clips] if key == "c" else starts
            for workers in (1, 2):
                # Best of a few runs: the figure we want is the cost, not other load on the machine.
                rate[key, workers] = max(clips_per_s(fn, path, clip_starts, workers, **kwargs)
                                         for _ in range(args.repeats))
            print(f"{label:52s} {rate[key, 1]:>9.2f} {rate[key, 2]:>9.2f}", flush=True)

        print("\ntime ratios A/B, same run: from the throughputs above | paired: A and B timed back to back on"
              " each clip (wall, and CPU time = the cost)")
        print(f"{'':9s} {'thr 1w':>7} {'thr 2w':>7} | {'wall 1w':>7} {'wall 2w':>7} {'cpu 1w':>7} {'cpu 2w':>7}"
              f"   CPU ms/clip A, B (1 worker)")
        for num, den in (("a", "b"), ("a0", "b"), ("a1", "b"), ("a2", "b"), ("a+", "b+"), ("a", "b0"), ("c", "a")):
            line = f"{num + '/' + den:9s} {rate[den, 1] / rate[num, 1]:>7.3f} {rate[den, 2] / rate[num, 2]:>7.3f}"
            if num != "c":
                p1, p2 = (paired(path, starts, w, methods[num][1:], methods[den][1:]) for w in (1, 2))
                line += (f" | {p1['wall']:>7.3f} {p2['wall']:>7.3f} {p1['cpu']:>7.3f} {p2['cpu']:>7.3f}"
                         f"   {p1['cpu_a_ms']:.0f}, {p1['cpu_b_ms']:.0f}")
            print(line, flush=True)

        one = clips_per_s(ours, path, starts, 0, threads=0)
        one_st = clips_per_s(ours, path, starts, 0, threads=1)
        print(f"\n(a) in the main process (no workers): threads=0 (FFmpeg frame threading, the default "
              f"outside workers) {one:.2f} clips/s, threads=1 {one_st:.2f} clips/s")

        print("\ncost of one clip against its position in the file (ms, median over 3 nearby starts, 1 thread)")
        print(f"{'position':>8}  {'start s':>8}  {'(a) ours':>9}  {'(a1) dec':>9}  {'(b) bare':>9}  {'(c) start':>10}")
        span = duration - CLIP_S
        for frac in (0.02, 0.25, 0.5, 0.75, 0.98):
            s0 = frac * span
            near = [min(span, s0 + d) for d in (0.0, 0.7, 1.9)]  # different distances to the key frame
            ta = ms_per_clip(ours, path, near, threads=1)
            ta1 = ms_per_clip(ours, path, near, threads=1, normalize="none")
            tb = ms_per_clip(bare, path, near)
            tc = ms_per_clip(from_start, path, near[:1])
            print(f"{frac:>8.0%}  {s0:>8.1f}  {ta:>9.1f}  {ta1:>9.1f}  {tb:>9.1f}  {tc:>10.1f}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
