import json
import math

import numpy as np
import pytest
import torch

from vatt.eval import linear_probe as LP


def _blobs(n_per_class, num_classes, dim, spread, seed):
    """Gaussian blobs around well-separated random centres: linearly separable for small spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 4
    labels = np.repeat(np.arange(num_classes), n_per_class)
    feats = centres[labels] + spread * rng.normal(size=(labels.size, dim))
    return feats.astype(np.float32), labels


def test_hand_written_gradients_match_autograd():
    rng = np.random.default_rng(0)
    d, h, c, b = 7, 5, 4, 6
    params = [torch.tensor(rng.normal(size=s)) for s in ((d, h), (h,), (h, c), (c,))]
    x = torch.tensor(rng.normal(size=(b, d)))
    y = torch.tensor(rng.integers(0, c, size=b))
    mask = torch.tensor((rng.random((b, h)) < 0.5) / 0.5)
    loss, grads = LP._probe_loss_and_grads(params, x, y, mask, l2=0.1)

    leaves = [p.clone().requires_grad_() for p in params]
    w1, b1, w2, b2 = leaves
    logits = ((x @ w1 + b1) * mask) @ w2 + b2
    ref = torch.nn.functional.cross_entropy(logits, y) + 0.1 * (w2 ** 2).sum()  # Keras L2(0.1) = 0.1 * sum(w²)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-12)
    for g, leaf in zip(grads, leaves):
        torch.testing.assert_close(g, leaf.grad, rtol=1e-10, atol=1e-12)


def test_glorot_normal_is_keras_truncated():
    w = LP.OfficialProbe._glorot_normal(600, 400, torch.Generator().manual_seed(0))
    target_std = math.sqrt(2 / 1000)
    assert w.shape == (600, 400)
    assert float(w.std()) == pytest.approx(target_std, rel=0.02)
    assert float(w.abs().max()) <= 2 * target_std / 0.87962566103423978 + 1e-6


def test_official_probe_separable_data_and_determinism():
    x, y = _blobs(40, 4, 16, spread=0.5, seed=1)
    x_test, y_test = _blobs(25, 4, 16, spread=0.5, seed=1)  # same centres (same seed), new noise below
    x_test = x_test + 0.1 * np.random.default_rng(9).normal(size=x_test.shape).astype(np.float32)
    cfg = LP.OfficialProbeConfig(epochs=60)
    probe = LP.OfficialProbe(cfg).fit(x, y)
    assert np.mean(probe.predict_proba(x_test).argmax(1) == y_test) == 1.0
    again = LP.OfficialProbe(cfg).fit(x, y)
    for k in probe.params:
        torch.testing.assert_close(probe.params[k], again.params[k], rtol=0, atol=0)
    other_seed = LP.OfficialProbe(LP.OfficialProbeConfig(epochs=60, seed=2)).fit(x, y)
    assert not torch.equal(probe.params["w1"], other_seed.params["w1"])


def test_official_probe_full_batch_and_torch_threads_restored():
    x, y = _blobs(30, 3, 8, spread=0.3, seed=2)
    threads = torch.get_num_threads()
    probe = LP.OfficialProbe(LP.OfficialProbeConfig(epochs=300, batch_size=None)).fit(x, y)
    assert torch.get_num_threads() == threads
    assert np.mean(probe.predict_proba(x).argmax(1) == y) == 1.0


@pytest.mark.parametrize("classifier,config", [
    ("official", LP.OfficialProbeConfig(epochs=30)),
    ("logistic", LP.LogisticProbeConfig(C_grid=(1e-3, 1.0))),
])
def test_random_labels_are_near_chance(classifier, config):
    rng = np.random.default_rng(3)
    num_classes = 10
    x, y = rng.normal(size=(500, 32)), rng.integers(0, num_classes, 500)
    x_test, y_test = rng.normal(size=(2000, 32)), rng.integers(0, num_classes, 2000)
    probe = LP.make_probe(classifier, config).fit(x, y, num_classes)
    acc = np.mean(probe.predict_proba(x_test).argmax(1) == y_test)
    assert abs(acc - 1 / num_classes) < 0.04  # chance is 0.10; the binomial std is 0.007


def test_logistic_probe_separable_and_C_selection():
    x, y = _blobs(30, 5, 12, spread=0.5, seed=4)
    probe = LP.LogisticProbe(LP.LogisticProbeConfig(C_grid=(1e-4, 1e-2, 1.0))).fit(x, y)
    assert probe.C in (1e-4, 1e-2, 1.0) and set(probe.holdout_top1) == {1e-4, 1e-2, 1.0}
    assert np.mean(probe.predict_proba(x).argmax(1) == y) == 1.0
    fixed = LP.LogisticProbe(LP.LogisticProbeConfig(C=0.5)).fit(x, y)
    assert fixed.C == 0.5 and fixed.holdout_top1 == {}


class _CountingProbe:
    """A stand-in probe whose probabilities encode the window index, to see what is averaged."""

    def predict_proba(self, x):
        # x [N, W, D]; probability of class 1 = first feature, so the mean is checkable by hand.
        p1 = x[..., 0]
        return np.stack([1 - p1, p1], axis=-1)


def test_window_averaging_averages_each_clips_windows():
    feats = np.zeros((2, 4, 3), dtype=np.float32)
    feats[0, :, 0] = [0.0, 0.2, 0.4, 0.6]  # mean 0.3
    feats[1, :, 0] = [1.0, 1.0, 0.0, 0.0]  # mean 0.5
    expected = np.array([[0.7, 0.3], [0.5, 0.5]])
    np.testing.assert_allclose(LP.predict_windows(_CountingProbe(), feats), expected, atol=1e-7)
    flat = feats.reshape(8, 3)  # the official clip-major layout
    np.testing.assert_allclose(LP.predict_windows(_CountingProbe(), flat, num_windows=4), expected, atol=1e-7)
    with pytest.raises(ValueError):
        LP.predict_windows(_CountingProbe(), feats, num_windows=2)
    with pytest.raises(ValueError):
        LP.predict_windows(_CountingProbe(), flat[:7], num_windows=4)


def test_window_averaging_is_mean_softmax_of_official_probe():
    x, y = _blobs(20, 3, 6, spread=0.5, seed=5)
    probe = LP.OfficialProbe(LP.OfficialProbeConfig(epochs=5)).fit(x, y)
    windows = np.random.default_rng(6).normal(size=(4, 3, 6)).astype(np.float32)
    per_window = np.stack([probe.predict_proba(windows[:, w]) for w in range(3)], axis=1)
    np.testing.assert_allclose(LP.predict_windows(probe, windows), per_window.mean(1), rtol=1e-6)


def test_evaluate_splits_mean_and_protocol():
    splits = []
    for seed in (7, 8):
        x, y = _blobs(20, 3, 8, spread=0.3, seed=seed)
        rng = np.random.default_rng(seed + 100)
        test = x[:, None, :] + 0.05 * rng.normal(size=(x.shape[0], 2, 8)).astype(np.float32)  # 2 windows
        splits.append(((x, y), (test, y)))
    res = LP.evaluate_splits(splits, classifier="logistic", config=LP.LogisticProbeConfig(C=1.0),
                             dataset="toy", split_names=["a", "b"], keep_probes=True)
    assert res.split_names == ["a", "b"] and len(res.per_split) == 2 and len(res.probes) == 2
    assert res.mean["top1"] == pytest.approx(np.mean([s["top1"] for s in res.per_split]))
    assert res.mean["top1"] == 1.0
    assert all(s["C"] == 1.0 for s in res.per_split)
    p = res.protocol
    assert (p.num_splits, p.num_windows_test, p.num_classes, p.feature_dim) == (2, 2, 3, 8)
    assert p.num_train == (60, 60) and p.num_test == (60, 60) and p.config["C"] == 1.0
    assert "mean softmax over 2 windows" in p.describe()
    json.dumps(res.as_dict())
    with pytest.raises(ValueError):
        LP.evaluate_splits([])
