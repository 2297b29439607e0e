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


# Retrieval from embedding arrays (the `vatt embed` / .npz layout)

def known_arrays(n=6, w=4, d=8, seed=0):
    """Embedding arrays (the `vatt embed` layout) where clip i's windows, its captions and its audio all
    point the same way: every direction must give R@1 = 1."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    windows = base[:, None, :] * rng.uniform(0.5, 2.0, (n, w, 1))  # same direction, other lengths
    text_clip = np.array([0, 1, 1, 2, 3, 4, 5, -1])  # clip 1 has two captions; the last one is free text
    text = base[np.clip(text_clip, 0, None)] * 3.0
    return {
        "clip": np.repeat(np.arange(n), w), "has_video": np.ones(n * w, bool), "has_audio": np.ones(n * w, bool),
        "audio_mask": np.ones(n * w, np.float32), "video_vt": windows.reshape(n * w, d),
        "video_va": windows.reshape(n * w, d), "audio_va": (windows * 0.5).reshape(n * w, d),
        "text_vt": text, "text_clip": text_clip, "text": np.array([f"caption {i}" for i in range(8)]),
        "meta": {"num_windows": w},
    }


def test_retrieval_of_identical_embeddings_is_perfect():
    results, notes = R.retrieval_from_arrays(known_arrays(), split="known",
                                           directions=("text->video", "video->text", "audio->video"))
    assert {(r.protocol.direction, r.protocol.mode) for r in results} == {
        (d, m) for d in ("text->video", "video->text", "audio->video") for m in ("embd", "cosine")}
    for r in results:
        assert r.metrics["R@1"] == 1.0 and r.metrics["MedR"] == 1.0, r.protocol
        assert r.protocol.num_windows == 4
    t2v = next(r for r in results if r.protocol.direction == "text->video")
    assert t2v.protocol.num_queries == 7 and t2v.protocol.captions_per_video == pytest.approx(7 / 6)
    assert notes["num_text_videos"] == 6 and notes["skipped_directions"] == {}


def test_retrieval_ranks_a_swapped_pair_second():
    arrays = known_arrays()
    arrays["text_vt"][[0, 3]] = arrays["text_vt"][[3, 0]]  # captions of clips 0 and 2 swapped
    results, _ = R.retrieval_from_arrays(arrays, directions=("text->video",), modes=("embd",))
    ranks = results[0].ranks
    assert ranks[0] > 1 and ranks[3] > 1 and all(ranks[[1, 2, 4, 5, 6]] == 1)


def test_retrieval_skips_what_the_data_lacks_and_says_why():
    arrays = known_arrays()
    arrays["has_audio"][:] = False
    results, notes = R.retrieval_from_arrays(arrays)  # the official directions: text->video, audio->video
    assert "audio->video" in notes["skipped_directions"]
    assert {r.protocol.direction for r in results} == {"text->video"}
    with pytest.raises(ValueError, match="audio->video"):
        R.retrieval_from_arrays(arrays, directions=("audio->video",), strict=True)


def test_heldout_retrieval_uses_the_clips_with_text_and_audio():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(5, 8))
    emb = {"video_vt": base, "text_vt": base * 2.0, "video_va": base, "audio_va": base * 0.5,
           "text_mask": np.array([1, 1, 0, 1, 1], np.float32), "audio_mask": np.array([1, 0, 1, 1, 0], np.float32)}
    metrics = R.heldout_retrieval(emb)
    assert metrics["text->video/R@1"] == 1.0 and metrics["text->video/num_items"] == 5  # 4 queries, all videos
    assert metrics["audio->video/R@1"] == 1.0 and metrics["audio->video/num_items"] == 3  # clips with audio
    emb["text_vt"] = emb["text_vt"][[1, 0, 2, 3, 4]]  # clips 0 and 1 swap captions
    assert R.heldout_retrieval(emb)["text->video/R@1"] == 0.5
