"""The sample dataset: real H.264 + AAC files whose picture, sound and caption agree, written reproducibly."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch

from vatt.cli import main
from vatt.data import decoding
from vatt.data.sample_data import (
    BEATS_PER_S,
    CLASSES,
    COLOURS,
    MANIFEST_COLUMNS,
    MOTION_PHRASES,
    MOTIONS,
    PITCH_HZ,
    SHAPE_WORDS,
    SampleDataConfig,
    describe_clip,
    write_sample_dataset,
)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rows(manifest) -> list[dict]:
    with open(manifest, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_descriptions_cover_every_combination_and_name_what_is_shown():
    clips = [describe_clip(i, seed=3) for i in range(64)]
    assert len({(c.colour, c.shape, c.motion) for c in clips}) == 64
    for c in clips:
        assert c.colour in c.caption
        assert any(w in c.caption for w in SHAPE_WORDS[c.shape])
        assert any(p in c.caption for p in MOTION_PHRASES[c.motion])
        assert c.label == f"{c.colour} {c.shape}" and CLASSES[c.label_index] == c.label
        assert c.split == ("test" if c.index % 5 == 4 else "train")
    assert len({c.caption for c in clips}) > 50  # wording varies
    assert describe_clip(7, seed=3) == clips[7]  # a function of (seed, index)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, num_clips=16, seed=1)
    return out


def test_files_are_h264_aac_mp4_with_a_manifest(sample_dir):
    rows = _rows(sample_dir / "manifest.csv")
    assert len(rows) == 16 and tuple(rows[0]) == MANIFEST_COLUMNS
    assert {r["split"] for r in rows} == {"train", "test"}
    assert (sample_dir / "labels.txt").read_text().splitlines() == list(CLASSES)
    info = decoding.probe(sample_dir / rows[0]["video"])
    assert info.format_name.startswith("mov,mp4")
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height, info.fps) == (64, 64, 10.0)
    assert info.audio_sample_rate == 16000 and info.audio_channels == 1
    assert info.duration_s == pytest.approx(4.0, abs=0.07)


def test_picture_sound_and_caption_agree(sample_dir):
    rows = _rows(sample_dir / "manifest.csv")
    for row in rows:
        clip = decoding.decode_clip(sample_dir / row["video"], 0.0, num_frames=40, fps=10.0,
                                    audio_samples=64000, sample_rate=16000)
        frames = clip.frames.numpy().astype(np.float32)  # [T, H, W, 3]
        # The object is the only bright thing on a dark background.
        mask = frames.max(axis=-1) > 150
        assert mask[0].sum() > 10 and mask[-1].sum() > 10, row["video"]
        mean_colour = frames[mask].mean(axis=0)
        assert np.abs(mean_colour - np.array(COLOURS[row["colour"]])).max() < 60, (row, mean_colour)
        ys, xs = np.nonzero(mask[0])
        ye, xe = np.nonzero(mask[-1])
        dx, dy = xe.mean() - xs.mean(), ye.mean() - ys.mean()
        expected = {"left to right": (1, 0), "right to left": (-1, 0), "upward": (0, -1), "downward": (0, 1)}
        ex, ey = expected[row["motion"]]
        assert dx * ex + dy * ey > 20, (row, dx, dy)  # crossed a good part of the 64-pixel frame

        audio = clip.audio.numpy()
        assert clip.audio_mask == 1.0
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
        freqs = np.fft.rfftfreq(audio.size, 1 / 16000)
        assert freqs[spectrum.argmax()] == pytest.approx(PITCH_HZ[row["colour"]], rel=0.05), row
        envelope = np.abs(audio).reshape(-1, 160).mean(axis=1)  # 100 Hz envelope
        env_spec = np.abs(np.fft.rfft(envelope - envelope.mean()))
        env_freqs = np.fft.rfftfreq(envelope.size, 1 / 100)
        assert env_freqs[env_spec.argmax()] == pytest.approx(BEATS_PER_S[row["motion"]], abs=0.4), row


def test_same_bytes_with_or_without_worker_processes(tmp_path, sample_dir):
    write_sample_dataset(tmp_path, num_clips=6, seed=1, num_workers=2)
    for i in range(6):
        name = f"videos/clip_{i:05d}.mp4"
        assert _md5(tmp_path / name) == _md5(sample_dir / name)
    assert _rows(tmp_path / "manifest.csv") == _rows(sample_dir / "manifest.csv")[:6]


def test_another_seed_changes_the_clips(tmp_path, sample_dir):
    write_sample_dataset(tmp_path, num_clips=2, seed=2)
    assert _md5(tmp_path / "videos/clip_00000.mp4") != _md5(sample_dir / "videos/clip_00000.mp4")


def test_config_sets_size_rate_and_length(tmp_path):
    cfg = SampleDataConfig(size=96, fps=5.0, duration_s=3.2, sample_rate=48000)
    write_sample_dataset(tmp_path, num_clips=1, config=cfg)
    info = decoding.probe(tmp_path / "videos/clip_00000.mp4")
    assert (info.width, info.fps, info.audio_sample_rate) == (96, 5.0, 48000)
    assert info.num_frames == 16
    with pytest.raises(ValueError, match="even"):
        write_sample_dataset(tmp_path, num_clips=1, config=SampleDataConfig(size=63))


def test_command(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path / "d"), "--num-clips", "3", "--seed", "4", "--workers", "0"]) == 0
    assert "wrote 3 clips" in capsys.readouterr().out
    rows = _rows(tmp_path / "d" / "manifest.csv")
    assert [r["caption"] for r in rows] == [describe_clip(i, seed=4).caption for i in range(3)]
    assert all(m in MOTIONS for m in (r["motion"] for r in rows))
    assert torch.is_tensor(decoding.decode_clip(tmp_path / "d" / rows[0]["video"], 0.0, num_frames=2).frames)
