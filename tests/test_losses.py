"""Tests for vatt.losses (AsymmetricNCE) and vatt.distributed (all_gather_with_grad)."""
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vatt.distributed import all_gather_with_grad, get_rank, get_world_size, is_distributed
import torch.nn.functional as F

from vatt.losses import (AsymmetricNCE, cross_entropy_on_probabilities, l2_normalize, label_frequency_weights,
                         sigmoid_cross_entropy, smooth_labels)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LOSS_DIR = SHARED / "parity" / "official-tiny" / "loss"
INPUTS = ("video_toaud", "audio_tovid", "video_totxt", "text_tovid")


def parity_cases():
    if not LOSS_DIR.is_dir():
        return []
    return sorted(LOSS_DIR.glob("*.npz"))


def max_rel_err(actual, expected):
    """max |a - e| relative to the largest |e| (the measure the parity README uses)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def assert_logits_close(actual, expected, rtol):
    """Masked logits must be exactly -1e9; the rest within rtol of the largest unmasked one."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    masked = expected < -1e8
    np.testing.assert_array_equal(actual[masked], expected[masked])
    if (~masked).any():
        assert max_rel_err(actual[~masked], expected[~masked]) < rtol


def run_official_layout(loss_fn, arrays, **kwargs):
    """Runs the loss on npz-style arrays (official key names) and returns (output, grads)."""
    inputs = {k: torch.tensor(arrays[k], requires_grad=True) for k in INPUTS}
    out = loss_fn(video_va=inputs["video_toaud"], audio_va=inputs["audio_tovid"],
                  video_vt=inputs["video_totxt"], text_vt=inputs["text_tovid"],
                  audio_mask=torch.tensor(arrays["audio_mask"]),
                  text_mask=torch.tensor(arrays["text_mask"]), **kwargs)
    out.total.backward()
    return out, {k: v.grad for k, v in inputs.items()}


# ---------------------------------------------------------------- parity with the official loss

def test_parity_folder_present():
    if not parity_cases():
        if os.environ.get("CI") == "true":
            pytest.fail(f"parity vectors missing: {LOSS_DIR}")
        pytest.skip(f"parity vectors not found at {LOSS_DIR}")


@pytest.mark.parametrize("path", parity_cases(), ids=lambda p: p.stem)
def test_parity_with_official(path):
    ref = np.load(path)
    loss_fn = AsymmetricNCE(temperature=float(ref["temperature"]),
                            vid_txt_weight=float(ref["vid_txt_weight"]),
                            vid_aud_weight=float(ref["vid_aud_weight"]),
                            loss_weight=float(ref["loss_weight"]))
    assert float(ref["aud_txt_weight"]) == 0.0  # the audio-text term is not implemented
    out, grads = run_official_layout(loss_fn, ref)

    for key, ours in [("loss_total", out.total), ("loss_vidtxt", out.video_text),
                      ("loss_vidaud", out.video_audio),
                      ("loss_fn/total_loss", out.total)]:
        assert max_rel_err(ours.detach(), ref[key]) < 1e-5, key
    for prefix, name in [("vt", "video_text"), ("va", "video_audio")]:
        term = out.terms[name]
        for field in ("sim_pos", "logsumexp_pos", "logsumexp_all", "per_sample_loss", "loss"):
            ours = getattr(term, field).detach().numpy()
            assert ours.shape == ref[f"{prefix}/{field}"].shape, field
            assert max_rel_err(ours, ref[f"{prefix}/{field}"]) < 1e-5, f"{prefix}/{field}"
        assert_logits_close(term.sim_all.detach().numpy(), ref[f"{prefix}/sim_all"], 1e-5)

    # Case d: float32 cancellation in the normalisation backward (README, independent check).
    grad_rtol = 1e-4 if path.stem.startswith("d_") else 1e-5
    for k in INPUTS:
        assert max_rel_err(grads[k], ref[f"grad/{k}"]) < grad_rtol, k
    # Exact zeros where the official gradient is exactly zero (masked text / audio rows).
    for k in INPUTS:
        zero = ref[f"grad/{k}"] == 0
        assert (grads[k].numpy()[zero] == 0).all(), k


# ---------------------------------------------------------------- naive float64 reference

def reference_nce(video, other, mask, tau, rows=None):
    """The official per-replica loss written with loops over rows, in float64.

    video [B_all, D], other [B_all·L, D] are the global batch; `rows` are the anchor clips of one
    replica (default: all). Returns the mean over that replica's valid anchors (0 if none).
    """
    n_all = len(video)
    n_pos = len(other) // n_all
    rows = range(n_all) if rows is None else rows

    def unit(x):
        return [xi / math.sqrt(max(sum(t * t for t in x), 1e-12)) for xi in x]

    def logsumexp(values):
        top = max(values)
        return top + math.log(sum(math.exp(v - top) for v in values))

    v = [unit(x) for x in video.tolist()]
    o = [unit(x) for x in other.tolist()]

    def sim(i, r):
        return sum(a * b for a, b in zip(v[i], o[r])) / tau

    total, n_valid = 0.0, 0
    for b in rows:
        if not mask[b]:
            continue
        n_valid += 1
        positives = [sim(b, b * n_pos + l) for l in range(n_pos)]
        candidates = []
        for c in range(n_all):  # video b against every clip's rows
            candidates += [sim(b, c * n_pos + l) - (0.0 if mask[c] else 1e9) for l in range(n_pos)]
        for j in range(n_all):  # clip b's rows against every video
            candidates += [sim(j, b * n_pos + l) for l in range(n_pos)]
        total += logsumexp(candidates) - logsumexp(positives)
    return total / n_valid if n_valid else 0.0


def random_batch(seed, batch=6, n_pos=4, d_va=8, d_vt=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    video_va = torch.randn(batch, d_va, generator=g, dtype=dtype)
    video_vt = torch.randn(batch, d_vt, generator=g, dtype=dtype)
    return dict(
        video_va=video_va,
        audio_va=0.6 * video_va + 0.8 * torch.randn(batch, d_va, generator=g, dtype=dtype),
        video_vt=video_vt,
        text_vt=(0.5 * video_vt[:, None] + torch.randn(batch, n_pos, d_vt, generator=g, dtype=dtype)
                 ).reshape(batch * n_pos, d_vt) * 3.0,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference(seed):
    x = random_batch(seed)
    text_mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    audio_mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0]) if seed else None
    w_vt, w_va = 1.0, 0.5 + seed
    out = AsymmetricNCE(vid_txt_weight=w_vt, vid_aud_weight=w_va, loss_weight=2.0)(
        **x, audio_mask=audio_mask, text_mask=text_mask)

    l_vt = reference_nce(x["video_vt"], x["text_vt"], text_mask.tolist(), 0.07)
    l_va = reference_nce(x["video_va"], x["audio_va"],
                         [1.0] * 6 if audio_mask is None else audio_mask.tolist(), 0.07)
    assert out.total.dtype == torch.float64
    assert out.video_text.item() == pytest.approx(w_vt * l_vt, rel=1e-12)
    assert out.video_audio.item() == pytest.approx(w_va * l_va, rel=1e-12)
    assert out.total.item() == pytest.approx(2.0 * (w_vt * l_vt + w_va * l_va) / (w_vt + w_va),
                                             rel=1e-12)


def test_gradients_match_finite_differences():
    x = random_batch(3, batch=3, n_pos=2, d_va=3, d_vt=3)
    x["text_vt"][1] *= 1e-7  # a row below the normalisation epsilon (norm < 1e-6)
    mask = torch.tensor([1.0, 0.0, 1.0])

    def fn(video_va, audio_va, video_vt, text_vt):
        return AsymmetricNCE()(video_va, audio_va, video_vt, text_vt, text_mask=mask).total

    inputs = tuple(t.clone().requires_grad_() for t in x.values())
    # A small step keeps the tiny row's squared norm below the epsilon while differencing.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-9)


def test_l2_normalize_follows_tf_epsilon():
    x = torch.tensor([[3.0, 4.0], [3e-9, 4e-9], [0.0, 0.0]])
    expected = torch.tensor([[0.6, 0.8], [3e-3, 4e-3], [0.0, 0.0]])  # norm 5e-9 is scaled by 1e6
    torch.testing.assert_close(l2_normalize(x), expected)


# ---------------------------------------------------------------- masks, totals, NaN

def test_masked_clip_text_gets_no_gradient():
    x = {k: v.float().requires_grad_() for k, v in random_batch(4).items()}
    text_mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    AsymmetricNCE()(**x, text_mask=text_mask).total.backward()
    text_grad = x["text_vt"].grad.view(6, 4, -1)
    assert (text_grad[2] == 0).all()
    assert (text_grad[[0, 1, 3, 4, 5]].abs().sum(-1) > 0).all()
    assert (x["video_vt"].grad[2].abs() > 0).any()  # its video stays a negative for the others


def test_all_text_masked_gives_half_the_audio_term():
    x = {k: v.float().requires_grad_() for k, v in random_batch(5).items()}
    out = AsymmetricNCE()(**x, text_mask=torch.zeros(6))
    assert out.video_text.item() == 0.0
    assert out.total.item() == pytest.approx(out.video_audio.item() / 2, rel=1e-7)
    out.total.backward()
    assert (x["text_vt"].grad == 0).all() and (x["video_vt"].grad == 0).all()


def test_single_pair_total_is_that_term():
    x = random_batch(6)
    out = AsymmetricNCE(vid_txt_weight=3.0)(video_vt=x["video_vt"], text_vt=x["text_vt"])
    assert out.video_audio is None and set(out.terms) == {"video_text"}
    assert out.total.item() == pytest.approx(out.video_text.item() / 3.0, rel=1e-12)
    # A zero weight drops the pair as the official code does.
    out = AsymmetricNCE(vid_aud_weight=0.0)(**x)
    assert out.video_audio is None
    assert out.total.item() == pytest.approx(out.video_text.item(), rel=1e-12)
    with pytest.raises(ValueError):
        AsymmetricNCE()(video_vt=x["video_vt"])
    with pytest.raises(ValueError, match=r"\[B·L, D\]"):
        AsymmetricNCE()(video_vt=x["video_vt"], text_vt=x["text_vt"][:-1])


def test_nan_is_reported_unless_zero_nan():
    x = random_batch(7, dtype=torch.float32)
    x["text_vt"][5, 0] = float("nan")
    out = AsymmetricNCE()(**x)
    assert torch.isnan(out.total) and torch.isnan(out.video_text)
    assert torch.isfinite(out.video_audio)
    # Official behaviour: every video-text row sees the NaN column, all are zeroed, L_vt = 0.
    official = AsymmetricNCE(zero_nan=True)(**x)
    assert official.video_text.item() == 0.0
    assert official.total.item() == pytest.approx(out.video_audio.item() / 2, rel=1e-7)


def test_half_precision_and_autocast_compute_in_float32():
    x = {k: v.to(torch.bfloat16) for k, v in random_batch(8).items()}
    out = AsymmetricNCE()(**x)
    assert out.total.dtype == torch.float32
    ref = AsymmetricNCE()(**{k: v.double() for k, v in x.items()})
    assert out.total.item() == pytest.approx(ref.total.item(), rel=1e-5)
    x32 = {k: v.float() for k, v in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = AsymmetricNCE()(**x32)
    assert autocast.total.dtype == torch.float32
    assert autocast.total.item() == pytest.approx(ref.total.item(), rel=1e-5)


# ---------------------------------------------------------------- distributed

def test_distributed_helpers_are_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert not is_distributed() and get_rank() == 0 and get_world_size() == 1
    assert all_gather_with_grad(x) is x


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_worker(rank, world_size, port, global_inputs, masks, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        results = []
        for audio_mask, text_mask in masks:
            local = {}
            for k, v in global_inputs.items():
                rows = v.shape[0] // world_size
                local[k] = v[rank * rows:(rank + 1) * rows].clone().requires_grad_()
            clips = audio_mask.shape[0] // world_size
            out = AsymmetricNCE()(**local, audio_mask=audio_mask[rank * clips:(rank + 1) * clips],
                                  text_mask=text_mask[rank * clips:(rank + 1) * clips])
            out.total.backward()
            results.append({"loss": out.total.detach(), "video_text": out.video_text.detach(),
                            "video_audio": out.video_audio.detach(),
                            "grads": {k: v.grad for k, v in local.items()}})
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_run_matches_one_process_over_global_batch(tmp_path):
    """Each rank holds half of a global batch of 8 clips.

    Rank r computes L_r: the mean over its own 4 clips, with negatives from all 8 (official
    per-replica semantics), and backward gives rank i the input gradient d(Σ_r L_r)/dx_i.
    DDP averages parameter gradients over ranks, so training follows mean_r L_r. With equal valid
    counts per rank, mean_r L_r equals the 1-process loss L_1 over the 8 clips, and hence
    concat_i(grad_i) / world_size = dL_1/dx. With unequal counts, each L_r still equals the naive
    per-replica reference, but mean_r L_r differs from L_1 (the official B/#valid is per replica).
    """
    world_size = 2
    global_inputs = random_batch(9, batch=8, n_pos=3, dtype=torch.float64)
    equal = (torch.tensor([1.0, 1, 1, 0, 0, 1, 1, 1]), torch.tensor([1.0, 0, 1, 1, 1, 1, 0, 1]))
    unequal = (torch.ones(8), torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]))
    mp.spawn(distributed_worker, nprocs=world_size, join=True,
             args=(world_size, free_port(), global_inputs, [equal, unequal], str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]

    # Equal valid counts: the distributed run is the 1-process run over the global batch.
    inputs = {k: v.clone().requires_grad_() for k, v in global_inputs.items()}
    single = AsymmetricNCE()(**inputs, audio_mask=equal[0], text_mask=equal[1])
    single.total.backward()
    mean_loss = sum(r[0]["loss"] for r in ranks) / world_size
    assert mean_loss.item() == pytest.approx(single.total.item(), rel=1e-6, abs=0)
    for k, v in inputs.items():
        grad = torch.cat([r[0]["grads"][k] for r in ranks]) / world_size
        torch.testing.assert_close(grad, v.grad, rtol=1e-6, atol=1e-9)

    # Unequal valid counts: each rank is the per-replica loss with global negatives.
    audio_mask, text_mask = unequal
    for rank, result in enumerate(ranks):
        rows = range(4 * rank, 4 * rank + 4)
        l_vt = reference_nce(global_inputs["video_vt"], global_inputs["text_vt"],
                             text_mask.tolist(), 0.07, rows)
        l_va = reference_nce(global_inputs["video_va"], global_inputs["audio_va"],
                             audio_mask.tolist(), 0.07, rows)
        assert result[1]["video_text"].item() == pytest.approx(l_vt, rel=1e-12)
        assert result[1]["video_audio"].item() == pytest.approx(l_va, rel=1e-12)


# ------------------------------------------------------------------------------------------------------
# Fine-tuning losses
# ------------------------------------------------------------------------------------------------------

def test_loss_on_probabilities_is_smoothed_cross_entropy_for_moderate_logits():
    logits = torch.randn(6, 5) * 2
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    targets = smooth_labels(F.one_hot(labels, 5).float(), 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert targets[0, 0].item() == pytest.approx(0.9 + 0.1 / 5)
    ours = cross_entropy_on_probabilities(logits, targets)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, label_smoothing=0.1), atol=1e-5, rtol=1e-5)


def test_loss_on_probabilities_clips_like_keras():
    # A class far below 1e-7 contributes log(1e-7) and no gradient (Keras clips probabilities).
    logits = torch.tensor([[30.0, 0.0, -30.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 0.0, 1.0]])
    loss = cross_entropy_on_probabilities(logits, targets)
    assert loss.item() == pytest.approx(-math.log(1e-7), rel=1e-4)
    loss.backward()
    assert logits.grad.abs().max().item() < 1e-6  # F.cross_entropy would give a gradient of ~1 here


def test_label_frequency_weights_by_hand():
    y = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    # counts: class0 2, class1 1, class2 1
    expected = torch.tensor([0.5, (0.5 + 1.0) / 2, 1.0, 0.0])
    torch.testing.assert_close(label_frequency_weights(y), expected)
    logits = torch.randn(4, 3)
    per_class = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits))
    torch.testing.assert_close(sigmoid_cross_entropy(logits, y), (per_class * expected[:, None]).sum(1).mean())
    torch.testing.assert_close(sigmoid_cross_entropy(logits, y, label_frequency_weighting=False),
                               per_class.sum(1).mean())
