import json

import numpy as np
import pytest

from vatt.eval import retrieval as R


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_identical_embeddings_retrieve_perfectly():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(40, 16))
    video = np.repeat(text[:, None, :], 4, axis=1)  # 4 identical windows per clip
    results = R.zero_shot_retrieval(video_text=video, text=text, video_audio=video, audio=text, split="toy/test")
    assert len(results) == 3 * 2  # three directions, two modes
    for r in results:
        assert r.metrics["R@1"] == 1.0 and r.metrics["MedR"] == 1.0 and r.metrics["MeanR"] == 1.0


def test_modes_agree_for_one_window():
    rng = np.random.default_rng(1)
    q, v = rng.normal(size=(5, 8)), rng.normal(size=(7, 1, 8)) * rng.uniform(0.1, 10, size=(7, 1, 1))
    embd, cosine = R.clip_similarity(q, v, "embd"), R.clip_similarity(q, v, "cosine")
    np.testing.assert_allclose(embd, cosine, atol=1e-12)
    np.testing.assert_allclose(embd, _unit(q) @ _unit(v[:, 0]).T, atol=1e-12)


def test_modes_match_official_definitions_with_windows():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(6, 8))
    v = rng.normal(size=(9, 4, 8)) * rng.uniform(0.1, 10, size=(9, 4, 1))  # windows of unequal norm
    embd_ref = _unit(q) @ _unit(v.mean(1)).T  # average windows, normalise, dot
    cosine_ref = np.mean([_unit(q) @ _unit(v[:, w]).T for w in range(4)], axis=0)  # mean per-window cosine
    np.testing.assert_allclose(R.clip_similarity(q, v, "embd"), embd_ref, atol=1e-12)
    np.testing.assert_allclose(R.clip_similarity(q, v, "cosine"), cosine_ref, atol=1e-12)
    assert not np.allclose(embd_ref, cosine_ref)


def test_modes_can_rank_differently():
    q = np.array([[1.0, 0.0]])
    video = np.array([[[10.0, 0.0], [0.0, 1.0]],   # one strong aligned window and one orthogonal
                      [[0.8, 0.6], [0.8, 0.6]]])   # two moderately aligned windows
    # embd: the large window dominates the mean (cos ≈ 0.995 > 0.8); cosine: mean(1, 0) = 0.5 < 0.8.
    assert R.retrieve(q, video, targets=[0], mode="embd").metrics["R@1"] == 1.0
    assert R.retrieve(q, video, targets=[0], mode="cosine").metrics["R@1"] == 0.0


def test_several_captions_per_video_and_protocol():
    rng = np.random.default_rng(3)
    video = rng.normal(size=(10, 4, 12))
    caption_video = np.repeat(np.arange(10), 3)  # 3 captions per video
    text = video.mean(1)[caption_video] + 0.01 * rng.normal(size=(30, 12))
    results = R.zero_shot_retrieval(video_text=video, text=text, caption_video=caption_video,
                                    directions=("text->video", "video->text"), modes=("embd",), split="toy/val")
    t2v, v2t = results
    assert t2v.protocol.direction == "text->video" and v2t.protocol.direction == "video->text"
    assert (t2v.protocol.num_queries, t2v.protocol.num_items) == (30, 10)
    assert (v2t.protocol.num_queries, v2t.protocol.num_items) == (10, 30)
    for r in results:
        assert r.protocol.num_windows == 4 and r.protocol.captions_per_video == 3.0
        assert r.protocol.split == "toy/val" and r.protocol.mode == "embd" and r.protocol.ties == "pessimistic"
        assert r.metrics["R@1"] == 1.0
    assert t2v.protocol.official and not v2t.protocol.official
    json.dumps([r.as_dict() for r in results])  # JSON-ready
    assert "3 captions/video" in t2v.protocol.describe()


def test_video_to_text_is_transpose_ranking():
    rng = np.random.default_rng(4)
    video, text = rng.normal(size=(8, 2, 6)), rng.normal(size=(8, 6))
    res = {r.protocol.direction: r for r in R.zero_shot_retrieval(video_text=video, text=text, modes=("cosine",),
                                                                  directions=("text->video", "video->text"))}
    sim = R.clip_similarity(text, video, "cosine")
    from vatt.eval.metrics import retrieval_ranks

    np.testing.assert_array_equal(res["text->video"].ranks, retrieval_ranks(sim))
    np.testing.assert_array_equal(res["video->text"].ranks, retrieval_ranks(sim.T))


def test_missing_inputs_and_bad_arguments():
    v = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="text"):
        R.zero_shot_retrieval(video_text=v, directions=("text->video",))
    with pytest.raises(ValueError, match="caption_video"):
        R.zero_shot_retrieval(video_text=v, text=np.ones((5, 4)), directions=("text->video",))
    with pytest.raises(ValueError, match="mode"):
        R.clip_similarity(np.ones((2, 4)), v, "max")
    with pytest.raises(ValueError, match="directions"):
        R.zero_shot_retrieval(video_text=v, text=np.ones((3, 4)), directions=("text->audio",))


def test_format_table():
    rng = np.random.default_rng(5)
    text = rng.normal(size=(20, 8))
    video = np.repeat(text[:, None], 4, axis=1)
    table = R.format_table(R.zero_shot_retrieval(video_text=video, text=text, split="msrvtt/test",
                                                 directions=("text->video", "video->text")))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["split", "direction", "mode"]
    assert len(lines) == 2 + 4 + 1  # header, rule, 2 directions x 2 modes, footer
    row = lines[2].split()
    assert row[:4] == ["msrvtt/test", "text->video", "embd", "4"]
    assert row[7:10] == ["100.0", "100.0", "100.0"]
    assert "video->text*" in table and "pessimistic" in lines[-1]
