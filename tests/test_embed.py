"""vatt.embed: embeddings of tensors, files and captions; windows; bad files; the model's embedding methods."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vatt
from vatt.data import decoding, transforms
from vatt.data.errors import MediaError
from vatt.data.sample_data import write_sample_dataset
from vatt.data.text import WordTokenizer
from vatt.data.manifest import read_manifest_entries
from vatt.embed import embed_entries, embed_files, embed_text
from vatt.embedding_files import embedding_arrays, read_embeddings, write_embeddings
from tests.conftest import shared_path as conftest_shared_path


def shared_path(*parts: str) -> Path:
    return conftest_shared_path("data", *parts)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    write_sample_dataset(out, num_clips=6, seed=2)
    return out


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = vatt.build_model("tx_fac_tiny").eval()
    model.tokenizer = WordTokenizer.build(["a red ball moving up", "the blue square"], max_size=1024)
    return model


def test_tensor_embeddings_are_the_model_outputs(tiny):
    video = torch.rand(3, 8, 64, 64, 3) * 2 - 1
    audio = torch.randn(2, 25600) * 0.1
    ids = torch.randint(4, 1000, (4, 16))
    with torch.no_grad():
        ref = tiny(video=video, audio=audio, text=ids)
    v = tiny.embed_video(video, batch_size=2)  # batched in two passes
    a = tiny.embed_audio(audio)
    t = tiny.embed_text(ids)
    torch.testing.assert_close(v.features, ref.video.features_pooled)
    torch.testing.assert_close(v.va, ref.video_va)
    torch.testing.assert_close(v.vt, ref.video_vt)
    torch.testing.assert_close(a.features, ref.audio.features_pooled)
    torch.testing.assert_close(a.va, ref.audio_va)
    torch.testing.assert_close(t.vt, ref.text_vt)
    assert a.vt is None and t.va is None


def test_embedding_restores_training_mode(tiny):
    tiny.train()
    tiny.embed_video(torch.zeros(1, 8, 64, 64, 3))
    assert tiny.training
    tiny.eval()


def test_text_from_strings_uses_the_model_tokenizer(tiny):
    out = tiny.embed_text(["a red ball moving up", "the blue square"])
    direct = tiny.embed_text(tiny.tokenizer.encode(["a red ball moving up", "the blue square"]))
    torch.testing.assert_close(out.vt, direct.vt)
    assert out.texts == ["a red ball moving up", "the blue square"]
    bare = vatt.build_model("tx_fac_tiny")
    bare.tokenizer = None
    with pytest.raises(ValueError, match="no word tokenizer"):
        embed_text(bare, ["words"])


def test_file_windows_are_the_official_ones(tiny, sample):
    paths = sorted(str(p) for p in (sample / "videos").glob("*.mp4"))[:2]
    one = embed_files(tiny, paths, num_windows=1)
    four = embed_files(tiny, paths, num_windows=4)
    spec = one.spec
    duration = decoding.probe(paths[0]).duration_s
    # one window: the middle one; four: linearly spaced from 0 to the end. A window holds the frames and the
    # audio that starts with them (tiny: 0.8 s and 3.2 s), so both end inside the file.
    window = max(spec.video_seconds, spec.audio_seconds)
    assert one.start_s[0, 0].item() == pytest.approx((duration - window) / 2)
    np.testing.assert_allclose(four.start_s[0].numpy(), np.linspace(0, duration - window, 4))
    arrays = embedding_arrays(four)
    assert np.nanmax(arrays["audio_end_s"]) <= duration + 1e-6 and np.nanmax(arrays["video_end_s"]) <= duration
    assert four.video.features.shape == (2, 4, 64) and four.video.vt.shape == (2, 4, 256)
    assert four.audio.va.shape == (2, 4, 512) and bool(four.has_audio.all()) and bool(four.has_video.all())
    # a window's embedding is the model's output on that decoded, centre-cropped window
    start = four.start_s[1, 2].item()
    clip = decoding.decode_clip(paths[1], start, spec.num_frames, spec.fps, spec.audio_samples, spec.sample_rate,
                                audio_pad="loop")
    with torch.no_grad():
        ref = tiny(video=transforms.eval_video_transform(clip.frames, spec.size)[None], audio=clip.audio[None])
    torch.testing.assert_close(four.video.vt[1, 2], ref.video_vt[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(four.audio.va[1, 2], ref.audio_va[0], atol=1e-5, rtol=1e-4)
    # the model methods squeeze the window axis for one window
    v = tiny.embed_video(paths, num_windows=1)
    assert v.features.shape == (2, 64) and v.start_s.shape == (2, 1)
    torch.testing.assert_close(v.features, one.video.features[:, 0])


def test_audio_files_need_no_video_and_no_captions(tiny):
    wav = shared_path("fsdd", "recordings", "3_theo_0.wav")
    out = embed_files(tiny, [str(wav)])
    assert out.video is None and bool(out.has_audio.all()) and out.audio_mask.item() == 1.0
    a = tiny.embed_audio([str(wav)])
    assert a.features.shape == (1, 64) and a.va.shape == (1, 512)
    with pytest.raises(MediaError, match="no_video_stream"):
        tiny.embed_video([str(wav)])


def test_bad_files_name_file_and_reason_or_are_skipped(tiny, sample, tmp_path):
    good = str(sorted((sample / "videos").glob("*.mp4"))[0])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError) as err:
        embed_files(tiny, [good, str(empty)])
    assert str(empty) in str(err.value) and err.value.reason == "empty_file"
    out = embed_files(tiny, [good, str(empty), str(broken), str(tmp_path / "missing.mp4")], skip_bad=True)
    assert out.paths == [good]
    assert sorted(e.reason for e in out.errors) == ["corrupt", "empty_file", "missing_file"]


def test_real_clips_are_embedded_without_error(tiny, tmp_path):
    clips = sorted(shared_path("real-video-clips").glob("*.mp4"))
    out = embed_files(tiny, clips, num_windows=2, num_workers=2)
    assert len(out) == len(clips) == 8 and not out.errors
    assert bool(torch.isfinite(out.video.features).all()) and bool(out.has_video.all())
    # clips without an audio stream have no audio rows; the others do
    has_stream = [decoding.probe(p).has_audio for p in clips]
    assert out.has_audio.tolist() == has_stream
    assert bool(torch.isnan(out.audio.va[~out.has_audio]).all()) and bool(torch.isfinite(out.audio.va[out.has_audio]).all())
    written = write_embeddings(tmp_path / "real.npz", out)
    assert read_embeddings(written[0])["video_vt"].shape == (16, 256)


def test_entries_with_their_captions_and_free_texts(tiny, sample):
    entries = read_manifest_entries(sample / "manifest.csv")[:3]
    out = embed_entries(tiny, entries, captions="first", texts=["a free text"], num_windows=1)
    assert out.text_clip == [-1, 0, 1, 2] and out.text.texts == ["a free text"] + [e.captions[0] for e in entries]
    assert len(out.files) == 3
    torch.testing.assert_close(out.text.vt, embed_text(tiny, out.text.texts).vt)
    assert embed_entries(tiny, entries, captions="none").text is None


def test_model_methods_are_the_embedding_functions_and_the_model_does_not_import_them():
    import ast
    import inspect

    import vatt.model.vatt as model_module
    classifier = vatt.build_model("wat_tiny_classifier")
    assert hasattr(classifier, "embed_audio") and not hasattr(classifier, "embed_video")
    assert not hasattr(vatt.model.build_model("tx_fac_tiny"), "embed_video")  # the bare model
    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(model_module)))
                if isinstance(node, ast.ImportFrom)}
    assert "vatt.configs" in imported and not {"vatt.embed", "vatt.inference"} & imported
