"""vatt.configs: the model's input specification (what a window of a file becomes)."""
from __future__ import annotations

import pytest

from vatt.configs import DEFAULT_FPS, get_preset, input_spec


def test_input_spec_follows_the_model_config():
    official = input_spec(get_preset("tx_fac_bbs"))
    assert (official.num_frames, official.size, official.audio_samples, official.sample_rate) == (32, 224, 153600, 48000)
    assert official.fps == 10.0 and official.video_seconds == pytest.approx(3.2) == official.audio_seconds
    tiny = input_spec(get_preset("tx_fac_tiny"))
    assert (tiny.num_frames, tiny.size, tiny.audio_samples, tiny.sample_rate) == (8, 64, 25600, 8000)
    ut = input_spec(get_preset("ut_fac_medium"), fps=12.5)
    assert (ut.num_frames, ut.size, ut.audio_samples, ut.fps) == (32, 224, 153600, 12.5)
    audio_only = input_spec(get_preset("wat_tiny_classifier"))
    assert audio_only.num_frames is None and audio_only.audio_samples == 25600


def test_input_spec_sizes_given_replace_the_models():
    spec = input_spec(get_preset("tx_fac_tiny"), 12.5, num_frames=16, size=0, audio_samples=0, sample_rate=16000)
    assert (spec.num_frames, spec.size, spec.audio_samples, spec.sample_rate, spec.fps) == (16, 64, 25600, 16000, 12.5)
    assert input_spec(get_preset("tx_fac_tiny")).fps == DEFAULT_FPS == 10.0
    with pytest.raises(ValueError, match="fps must be > 0"):
        input_spec(get_preset("tx_fac_tiny"), 0.0)
    with pytest.raises(TypeError, match="no input sizes"):
        input_spec(object())
