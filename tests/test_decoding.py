"""Tests of vatt.data.decoding and vatt.data.errors.

Synthetic files are written here with PyAV so the truth is known exactly: every video frame shows its
own index as 10 black/white bars, frames carry chosen timestamps (also variable frame rate), and audio
has a click at a chosen time. Real recordings come from ../shared/data (skipped when absent, except
under CI=true).
"""
from __future__ import annotations

import bisect
import csv
import os
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vatt.data.decoding import decode_audio, decode_clip, file_duration, probe, sample_start
from vatt.data.errors import MediaError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# --------------------------------------------------------------------------------------------------
# Synthetic media
# --------------------------------------------------------------------------------------------------

BITS, BAR = 10, 16  # frame index as 10 bars of 16 px: black = 0, white = 1
W, H = BITS * BAR, 48


def index_image(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)  # [H, W, 3]
    for b in range(BITS):
        if (i >> b) & 1:
            img[:, b * BAR:(b + 1) * BAR] = 255
    return img


def read_index(frame: np.ndarray) -> int:
    """Frame index from a decoded [H, W, 3] frame (bars survive lossy coding)."""
    cols = frame.reshape(frame.shape[0], BITS, -1, 3).mean(axis=(0, 2, 3))
    return int(sum(1 << b for b in range(BITS) if cols[b] > 128))


def click_signal(seconds: float, sr: int, click_s: float) -> np.ndarray:
    sig = np.zeros(int(round(seconds * sr)), np.float32)
    k = int(round(click_s * sr))
    sig[k:k + max(1, int(0.002 * sr))] = 0.9  # a 2 ms burst: one clear peak after lossy coding
    return sig


def write_video(path: Path, pts_ms: list[int], *, audio: np.ndarray | None = None, audio_sr: int = 44100,
                layout: str = "stereo", gop: int = 25, faststart: bool = False) -> Path:
    """H.264 frames showing their index at the given pts (ms), optional AAC audio track."""
    container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    v = container.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    v.time_base = Fraction(1, 1000)
    v.codec_context.time_base = Fraction(1, 1000)
    v.options = {"crf": "12", "preset": "ultrafast", "g": str(gop), "bf": "2"}
    a = None
    if audio is not None:
        a = container.add_stream("aac", rate=audio_sr)
        a.layout = layout
    nch = av.AudioLayout(layout).nb_channels
    apos = 0
    for i, p in enumerate(pts_ms):
        f = av.VideoFrame.from_ndarray(index_image(i), format="rgb24")
        f.pts, f.time_base = p, Fraction(1, 1000)
        for pkt in v.encode(f):
            container.mux(pkt)
        # Interleave audio up to this frame's time, as real muxers do.
        while a is not None and apos < min(audio.size, (p + 40) * audio_sr // 1000):
            n = min(1024, audio.size - apos)
            af = av.AudioFrame.from_ndarray(np.tile(audio[apos:apos + n], (nch, 1)), format="fltp", layout=layout)
            af.sample_rate, af.pts, af.time_base = audio_sr, apos, Fraction(1, audio_sr)
            for pkt in a.encode(af):
                container.mux(pkt)
            apos += n
    for pkt in v.encode():
        container.mux(pkt)
    if a is not None:
        for pkt in a.encode():
            container.mux(pkt)
    container.close()
    return path


def write_wav(path: Path, signal: np.ndarray, sr: int) -> Path:
    container = av.open(str(path), "w", format="wav")
    a = container.add_stream("pcm_s16le", rate=sr)
    a.layout = "mono"
    a.format = "s16"
    pcm = (signal * 32767).astype(np.int16)
    for pos in range(0, pcm.size, 4096):
        af = av.AudioFrame.from_ndarray(pcm[None, pos:pos + 4096], format="s16", layout="mono")
        af.sample_rate, af.pts = sr, pos
        for pkt in a.encode(af):
            container.mux(pkt)
    for pkt in a.encode():
        container.mux(pkt)
    container.close()
    return path


CLICK_S = 2.5  # click time in the CFR test video


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    vfr_steps = rng.choice([20, 40, 67, 100], size=199)  # ms between frames: 15 to 50 fps
    return {
        # 10 s at 25 fps, key frame every second, B-frames, AAC 44.1 kHz stereo with a click at 2.5 s.
        "cfr": write_video(d / "cfr.mp4", [40 * i for i in range(250)],
                           audio=click_signal(10.0, 44100, CLICK_S)),
        "vfr": write_video(d / "vfr.mp4", [0] + np.cumsum(vfr_steps).tolist(), gop=10),
        "wav": write_wav(d / "click.wav", click_signal(4.0, 8000, 1.7), 8000),
    }


def pts_list_s(path: Path) -> list[float]:
    """Every frame's pts (seconds) from a straight decode, the reference for frame choice."""
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(video=0)]


def expected_indices(pts: list[float], start_s: float, num_frames: int, fps: float) -> list[int]:
    """Index of the last frame with pts <= start + i/fps (the first frame if none)."""
    return [max(0, bisect.bisect_right(pts, start_s + i / fps + 1e-6) - 1) for i in range(num_frames)]


# --------------------------------------------------------------------------------------------------
# Frame choice and timing
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("start_s", [0.0, 0.96, 3.333, 6.8])
def test_cfr_frames_are_nearest_previous_at_target_fps(media, start_s):
    pts = pts_list_s(media["cfr"])
    clip = decode_clip(media["cfr"], start_s, num_frames=32, fps=10.0, decode_audio=False)
    assert clip.frames.shape == (32, H, W, 3) and clip.frames.dtype == torch.uint8
    got = [read_index(f) for f in clip.frames.numpy()]
    assert got == expected_indices(pts, start_s, 32, 10.0)
    # frame_times are the pts of the chosen frames, each at most one source frame before its target.
    targets = start_s + np.arange(32) / 10.0
    assert np.all(clip.frame_times.numpy() <= targets + 1e-6)
    assert np.all(clip.frame_times.numpy() > targets - 0.04 - 1e-6)
    assert clip.num_padded_frames == 0


def test_stride_two_at_25fps_is_every_other_frame(media):
    # The official eval takes 32 frames with stride 2 from 25 fps video: fps=12.5 here.
    clip = decode_clip(media["cfr"], 2.0, num_frames=32, fps=12.5, decode_audio=False)
    assert [read_index(f) for f in clip.frames.numpy()] == list(range(50, 50 + 64, 2))


@pytest.mark.parametrize("start_s", [0.0, 1.234, 7.77, 11.3])
def test_variable_frame_rate_follows_timestamps(media, start_s):
    pts = pts_list_s(media["vfr"])
    assert len(set(np.round(np.diff(pts), 3))) > 2  # really variable
    clip = decode_clip(media["vfr"], start_s, num_frames=16, fps=10.0, decode_audio=False)
    n_valid = 16 - clip.num_padded_frames
    got = [read_index(f) for f in clip.frames.numpy()]
    assert got[:n_valid] == expected_indices(pts, start_s, 16, 10.0)[:n_valid]


def test_seeked_clip_equals_decoding_from_the_start(media):
    # Seeking must not change pixels: compare with frames from a full decode.
    with av.open(str(media["cfr"])) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    pts = pts_list_s(media["cfr"])
    clip = decode_clip(media["cfr"], 5.3, num_frames=8, fps=10.0, decode_audio=False)
    for frame, k in zip(clip.frames.numpy(), expected_indices(pts, 5.3, 8, 10.0)):
        np.testing.assert_array_equal(frame, full[k])


def test_unneeded_non_reference_frames_are_not_decoded(media, monkeypatch):
    # The test video has B-frames, a third of them non-reference. Frames that cannot be chosen must
    # be skipped, and the kept frames must still equal a full decode.
    from vatt.data import decoding

    decoded = []
    original = decoding._DecodeErrors.decode

    def counting(self, packet):
        frames = original(self, packet)
        if packet.stream.type == "video":
            decoded.extend(f.time for f in frames)
        return frames

    monkeypatch.setattr(decoding._DecodeErrors, "decode", counting)
    with av.open(str(media["cfr"])) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    pts = pts_list_s(media["cfr"])
    clip = decode_clip(media["cfr"], 5.3, num_frames=32, fps=10.0, decode_audio=False, threads=1)
    for frame, k in zip(clip.frames.numpy(), expected_indices(pts, 5.3, 32, 10.0)):
        np.testing.assert_array_equal(frame, full[k])
    span = [t for t in pts if 5.0 <= t <= 5.3 + 3.2]  # key frame at 5.0 up to the clip end
    assert len(set(decoded)) < 0.9 * len(span)  # 72 of 88 here; 87 without skipping


def test_video_shorter_than_clip_loops_or_repeats_last(media):
    # 8.5 s into a 10 s video: 15 real frames at 10 fps, then padding.
    pts = pts_list_s(media["cfr"])
    real = expected_indices(pts, 8.5, 15, 10.0)
    loop = decode_clip(media["cfr"], 8.5, num_frames=32, decode_audio=False)
    assert loop.num_padded_frames == 17
    idx = [read_index(f) for f in loop.frames.numpy()]
    assert idx[:15] == real and idx[15:30] == real and idx[30:] == real[:2]
    last = decode_clip(media["cfr"], 8.5, num_frames=32, decode_audio=False, video_pad="last")
    assert [read_index(f) for f in last.frames.numpy()] == real + [real[-1]] * 17


def test_clip_after_the_end_is_too_short(media):
    with pytest.raises(MediaError) as err:
        decode_clip(media["cfr"], 12.0, decode_audio=False)
    assert err.value.reason == "too_short" and str(media["cfr"]) in str(err.value)


def test_short_side_scales_kept_frames(media):
    clip = decode_clip(media["cfr"], 1.0, num_frames=4, decode_audio=False, short_side=24)
    assert clip.frames.shape == (4, 24, 80, 3)
    # Never upscales.
    clip = decode_clip(media["cfr"], 1.0, num_frames=4, decode_audio=False, short_side=480)
    assert clip.frames.shape == (4, H, W, 3)


def test_threaded_decoding_gives_the_same_frames(media):
    a = decode_clip(media["cfr"], 4.1, num_frames=16, decode_audio=False, threads=1)
    b = decode_clip(media["cfr"], 4.1, num_frames=16, decode_audio=False, threads=0)
    assert torch.equal(a.frames, b.frames)


def test_forked_worker_never_frees_a_threaded_codec_context(media):
    # A DataLoader worker used to hang for ever when its garbage collector freed a codec context that the
    # parent had decoded with frame threads (FFmpeg joins threads that do not exist after fork).
    import gc
    import signal
    import time

    enabled = gc.isenabled()
    gc.disable()  # keep the cycle below alive until the fork, as a collection that has not yet run would
    try:
        container = av.open(str(media["cfr"]))
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "AUTO", 0
        for i, _ in enumerate(container.decode(stream)):
            if i > 30:
                break
        cycle = [stream.codec_context]
        cycle.append(cycle)  # unreachable once the names are gone, freed only by a collection
        container.close()
        del container, stream, cycle, _
        pid = os.fork()
        if pid == 0:
            gc.collect()
            os._exit(0)
    finally:
        if enabled:
            gc.enable()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked process hung freeing a threaded codec context")


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("start_s", [0.0, 1.0, 2.2])
def test_audio_is_aligned_with_video_clock(media, start_s):
    clip = decode_clip(media["cfr"], start_s, num_frames=32, fps=10.0, audio_samples=153600)
    assert clip.audio.shape == (153600,) and clip.audio.dtype == torch.float32
    assert clip.audio_mask == 1.0
    peak = int(np.argmax(np.abs(clip.audio.numpy())))
    # 44.1 kHz stereo AAC -> 48 kHz mono: the click stays within 1 ms of where it was written.
    assert abs(peak / 48000 - (CLICK_S - start_s)) < 1e-3
    assert abs(clip.frame_times[0].item() - start_s) < 0.04  # video on the same clock


def test_wav_resampled_8k_to_48k_with_exact_timing(media):
    for start in (0.0, 0.5, 1.2):
        audio, mask = decode_audio(media["wav"], start, 96000)
        assert audio.shape == (96000,) and mask == 1.0
        onset = int(np.argmax(np.abs(audio.numpy()) > 0.3))
        assert abs(onset / 48000 + start - 1.7) < 0.5e-3


def test_audio_stride_takes_every_other_48k_sample_without_filtering(tmp_path):
    """The official AudioSet input: every other sample of the 48 kHz waveform. A tone at 18 kHz (above the
    12 kHz Nyquist limit of 24 kHz) survives plain decimation as its 6 kHz alias; a filtered 24 kHz resample
    removes it."""
    t = np.arange(48000 * 2) / 48000
    path = write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 18000 * t), 48000)
    full, _ = decode_audio(path, 0.5, 48000)
    strided, mask = decode_audio(path, 0.5, 24000, stride=2)
    assert strided.shape == (24000,) and mask == 1.0
    torch.testing.assert_close(strided, full[::2], rtol=0, atol=0)
    filtered, _ = decode_audio(path, 0.5, 24000, sample_rate=24000)
    assert float(strided.abs().max()) > 0.45 and float(filtered.abs().max()) < 0.05


def test_audio_past_the_end_is_masked_or_padded(media):
    # 4 s wav, 2 s asked from 3 s: only half is real audio.
    audio, mask = decode_audio(media["wav"], 3.0, 96000)
    assert mask == 0.0 and torch.count_nonzero(audio) == 0
    audio, mask = decode_audio(media["wav"], 1.0, 96000, pad="zeros")
    assert mask == 1.0  # fully covered, pad mode irrelevant
    audio, mask = decode_audio(media["wav"], 1.0, 48000 * 4, pad="loop")
    assert mask == 1.0
    a = audio.numpy()
    np.testing.assert_allclose(a[:48000 * 3][:10000], a[48000 * 3:][:10000])  # repeats the 3 s it had


def test_file_without_audio_gives_zeros_and_mask_zero(media):
    clip = decode_clip(media["vfr"], 0.0, num_frames=4)
    assert clip.audio.shape == (153600,) and clip.audio_mask == 0.0 and torch.count_nonzero(clip.audio) == 0
    audio, mask = decode_audio(media["vfr"], 0.0, 1000)
    assert mask == 0.0 and audio.shape == (1000,)
    with pytest.raises(MediaError) as err:
        decode_audio(media["vfr"], 0.0, 1000, require_audio=True)
    assert err.value.reason == "no_audio_stream"


def test_decode_one_modality_only(media):
    clip = decode_clip(media["cfr"], 1.0, decode_video=False)
    assert clip.frames is None and clip.audio.shape == (153600,) and clip.audio_mask == 1.0
    clip = decode_clip(media["cfr"], 1.0, decode_audio=False)
    assert clip.audio is None and clip.frames.shape[0] == 32


# --------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------

def test_sample_start_modes():
    g = torch.Generator().manual_seed(0)
    starts = sample_start(10.0, 3.2, g, "random", num_windows=500)
    assert len(starts) == 500 and min(starts) >= 0.0 and max(starts) <= 6.8
    assert max(starts) > 6.5 and min(starts) < 0.3  # covers the range
    assert sample_start(10.0, 3.2, torch.Generator().manual_seed(0), "random", 500) == starts
    assert sample_start(10.0, 3.2, mode="center") == [pytest.approx(3.4)]
    assert sample_start(10.0, 3.2, mode="linspace", num_windows=4) == pytest.approx([0.0, 6.8 / 3, 13.6 / 3, 6.8])
    assert sample_start(2.0, 3.2, g, "random", 3) == [0.0, 0.0, 0.0]  # shorter than a clip
    with pytest.raises(ValueError):
        sample_start(10.0, 3.2, mode="middle")


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------

def reason_of(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as err:
        fn(*args, **kwargs)
    assert str(args[0]) in str(err.value)  # the message names the file
    return err.value.reason


def test_bad_inputs_raise_media_error_with_reason(media, tmp_path):
    good = media["cfr"].read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])  # moov atom is at the end: lost
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    (tmp_path / "sound.mp4").write_bytes(media["wav"].read_bytes())  # a wav named .mp4
    (tmp_path / "unknown_codec.mp4").write_bytes(good.replace(b"avc1", b"zzzz"))

    assert reason_of(decode_clip, tmp_path / "missing.mp4", 0.0) == "missing_file"
    assert reason_of(decode_clip, tmp_path / "empty.mp4", 0.0) == "empty_file"
    assert reason_of(decode_clip, tmp_path / "truncated.mp4", 0.0) == "corrupt"
    assert reason_of(decode_clip, tmp_path / "random.mp4", 0.0) == "corrupt"
    assert reason_of(decode_clip, tmp_path / "sound.mp4", 0.0) == "no_video_stream"
    assert reason_of(decode_clip, tmp_path / "unknown_codec.mp4", 0.0) == "unsupported_codec"
    assert reason_of(decode_clip, media["cfr"], 0.0, max_pixels=100 * 40) == "too_large"
    assert reason_of(decode_clip, tmp_path, 0.0) == "unreadable"
    assert reason_of(probe, tmp_path / "random.mp4") == "corrupt"
    assert reason_of(decode_audio, tmp_path / "empty.mp4", 0.0, 100) == "empty_file"

    # Decoded by content, not by name: the wav still gives its audio.
    audio, mask = decode_audio(tmp_path / "sound.mp4", 1.0, 48000)
    assert mask == 1.0 and audio.abs().max() > 0.5
    info = probe(tmp_path / "sound.mp4")
    assert info.format_name == "wav" and not info.has_video and info.audio_sample_rate == 8000


def test_file_duration_is_probed_once_per_file(media, monkeypatch):
    path = str(media["cfr"])
    file_duration.cache_clear()
    assert file_duration(path) == probe(path).duration_s == pytest.approx(10.0, abs=0.05)
    monkeypatch.setattr("vatt.data.decoding.probe", lambda _: pytest.fail("probed twice"))
    assert file_duration(path) == pytest.approx(10.0, abs=0.05)  # from the cache


def test_truncated_faststart_file(tmp_path):
    # moov first, data cut at half: the first half decodes, a clip in the lost half is corrupt.
    path = write_video(tmp_path / "fs.mp4", [40 * i for i in range(250)], faststart=True)
    data = path.read_bytes()
    cut = tmp_path / "fs_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    clip = decode_clip(cut, 0.0, num_frames=8, decode_audio=False)
    pts = [0.04 * i for i in range(250)]
    assert [read_index(f) for f in clip.frames.numpy()] == expected_indices(pts, 0.0, 8, 10.0)
    assert reason_of(decode_clip, cut, 8.0, decode_audio=False) == "corrupt"


def test_media_error_pickles_for_dataloader_workers():
    err = pickle.loads(pickle.dumps(MediaError("/x/a.mp4", "corrupt", "bad moov")))
    assert (err.path, err.reason, err.detail) == ("/x/a.mp4", "corrupt", "bad moov")
    assert str(err) == "/x/a.mp4: corrupt: bad moov"
    with pytest.raises(ValueError):
        MediaError("/x", "no-such-reason")


def test_bad_arguments_are_value_errors(media):
    with pytest.raises(ValueError):
        decode_clip(media["cfr"], -1.0)
    with pytest.raises(ValueError):
        decode_clip(media["cfr"], 0.0, video_pad="mirror")


# --------------------------------------------------------------------------------------------------
# Real recordings (../shared/data)
# --------------------------------------------------------------------------------------------------

def shared(sub: str) -> Path:
    d = DATA / sub
    if not d.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{d} is missing; CI must provide the shared data")
        pytest.skip(f"{d} not present")
    return d


def real_clips() -> list[dict]:
    d = shared("real-video-clips")
    with open(d / "clips.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_probe_real_clips_matches_csv():
    d = shared("real-video-clips")
    for row in real_clips():
        info = probe(d / row["filename"])
        assert info.has_video and info.video_codec == "h264"
        assert (info.width, info.height) == (int(row["width"]), int(row["height"]))
        assert info.fps == pytest.approx(float(row["fps"]), abs=0.02)
        assert info.num_frames == int(row["frames"])
        assert info.duration_s == pytest.approx(float(row["duration_s"]), abs=0.02)
        assert info.has_audio == (row["has_audio"] == "1")
        if info.has_audio:
            assert info.audio_sample_rate == int(row["audio_sr"])
    assert probe(d / "big_buck_bunny.mp4").audio_channels == 6


def test_decode_real_clips():
    d = shared("real-video-clips")
    g = torch.Generator().manual_seed(1)
    for row in real_clips():
        path = d / row["filename"]
        duration = float(row["duration_s"])
        start = sample_start(duration, 3.2, g)[0]
        clip = decode_clip(path, start, short_side=128)
        h, w = int(row["height"]), int(row["width"])
        scale = min(1.0, 128 / min(h, w))
        assert clip.frames.shape == (32, round(h * scale), round(w * scale), 3), row["filename"]
        assert clip.frames.dtype == torch.uint8 and clip.frames.float().std() > 5  # real pictures
        assert clip.audio.shape == (153600,)
        if duration < 3.2:  # window_plant_pan: 1.2 s
            assert clip.num_padded_frames > 0 and clip.audio_mask == 0.0
        elif row["has_audio"] == "1" and float(row["audio_rms"]) > 0:
            assert clip.audio_mask == 1.0, row["filename"]
            assert clip.audio.abs().max() > 0.01  # sound, down-mixed to mono (5.1 in big_buck_bunny)
        elif row["has_audio"] == "1":  # cockatoo.mp4: a silent track is still audio
            assert clip.audio_mask == 1.0 and clip.audio.abs().max() == 0.0, row["filename"]
        else:
            assert clip.audio_mask == 0.0 and torch.count_nonzero(clip.audio) == 0


def test_real_clip_timing_against_stream_timestamps():
    # 29.97 fps (1001/30000 time base) and 28 fps files, clip from the middle.
    d = shared("real-video-clips")
    for name, start in (("shooting_basketball.mp4", 4.321), ("arm_wrestling.mp4", 5.0)):
        pts = pts_list_s(d / name)
        clip = decode_clip(d / name, start, decode_audio=False, short_side=64)
        k = expected_indices(pts, start, 32, 10.0)
        np.testing.assert_allclose(clip.frame_times.numpy(), [pts[i] for i in k], atol=1e-9)


def test_seek_onto_a_key_frame_that_does_not_decode_falls_back():
    # cockatoo.mp4 marks frames at 3.8 s and 7.25 s as key frames, but decoding from them gives
    # frames FFmpeg flags corrupt (green). Clips there must still equal a decode from the start.
    path = shared("real-video-clips") / "cockatoo.mp4"
    with av.open(str(path)) as c:
        full = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    pts = [t for t, _ in full]
    clip = decode_clip(path, 5.81, num_frames=8, decode_audio=False)
    for frame, k in zip(clip.frames.numpy(), expected_indices(pts, 5.81, 8, 10.0)):
        np.testing.assert_array_equal(frame, full[k][1])


def test_decode_real_audio_files():
    d = shared("audio-text-pairs")
    audio, mask = decode_audio(d / "jfk.flac", 2.0, 153600)  # 44.1 kHz stereo flac
    assert audio.shape == (153600,) and mask == 1.0 and audio.abs().max() > 0.1
    audio, mask = decode_audio(d / "librosa_data" / "198-209-0000.ogg", 5.0, 153600)  # 22.05 kHz vorbis
    assert mask == 1.0 and audio.abs().max() > 0.01
    audio, mask = decode_audio(d / "jfk.flac", 9.0, 153600)  # 11 s file: 3.2 s from 9 s runs out
    assert mask == 0.0


def test_fsdd_8k_wav_matches_a_reference_resampling():
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    d = shared("fsdd/recordings")
    path = d / "7_jackson_12.wav"
    sr, pcm = wavfile.read(path)
    assert sr == 8000
    ref = resample_poly(pcm.astype(np.float64) / 32768.0, 6, 1)  # 8 kHz -> 48 kHz
    audio, mask = decode_audio(path, 0.0, ref.size - 100)
    assert mask == 1.0
    a = audio.numpy().astype(np.float64)
    r = ref[: a.size]
    # Same timing (best lag 0 within +-5 samples) and nearly the same waveform.
    lags = range(-5, 6)
    corr = [np.dot(a[10 + lag: a.size - 10 + lag], r[10:-10]) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0
    assert np.corrcoef(a, r)[0, 1] > 0.99


def test_media_error_survives_dataloader_workers():
    """A worker's MediaError reaches the main process as a MediaError with the file and the reason."""
    from torch.utils.data import DataLoader, Dataset

    class Bad(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise MediaError("/videos/clip.mp4", "corrupt", "moov atom not found")

    with pytest.raises(MediaError) as info:
        next(iter(DataLoader(Bad(), num_workers=1)))
    assert (info.value.path, info.value.reason, info.value.detail) == ("/videos/clip.mp4", "corrupt", "moov atom not found")
