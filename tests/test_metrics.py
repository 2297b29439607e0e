import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from vatt.eval import metrics as M


# ---------------------------------------------------------------------------------------- retrieval

def test_retrieval_hand_computed():
    sim = np.array([[0.9, 0.1, 0.5],   # q0: item 0 is best            -> rank 1
                    [0.8, 0.2, 0.3],   # q1: item 1 is worst           -> rank 3
                    [0.1, 0.7, 0.6]])  # q2: item 1 beats item 2       -> rank 2
    np.testing.assert_array_equal(M.retrieval_ranks(sim), [1, 3, 2])
    m = M.retrieval_metrics(sim)
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["R@5"] == 1.0 and m["R@10"] == 1.0
    assert m["MedR"] == 2.0 and m["MeanR"] == 2.0


def test_retrieval_explicit_targets_non_square():
    sim = np.array([[0.1, 0.9, 0.3, 0.2],
                    [0.4, 0.3, 0.2, 0.1]])
    np.testing.assert_array_equal(M.retrieval_ranks(sim, targets=[1, 3]), [1, 4])
    with pytest.raises(ValueError, match="square"):
        M.retrieval_ranks(sim)


def test_retrieval_matches_official_argsort_formula_without_ties():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(50, 50))
    order = np.argsort(-sim, axis=1)  # the official computation, written here as the reference
    position = np.where(order == np.arange(50)[:, None])[1]
    m = M.retrieval_metrics(sim)
    assert m["R@1"] == pytest.approx(np.mean(position == 0))
    assert m["R@5"] == pytest.approx(np.mean(position < 5))
    assert m["R@10"] == pytest.approx(np.mean(position < 10))
    assert m["MedR"] == pytest.approx(np.median(position) + 1)
    assert m["MeanR"] == pytest.approx(np.mean(position) + 1)


def test_ties_pessimistic_and_optimistic():
    collapsed = np.zeros((4, 4))  # a collapsed model: everything equally similar
    np.testing.assert_array_equal(M.retrieval_ranks(collapsed), [4, 4, 4, 4])
    np.testing.assert_array_equal(M.retrieval_ranks(collapsed, ties="optimistic"), [1, 1, 1, 1])
    assert M.retrieval_metrics(collapsed)["R@1"] == 0.0

    sim = np.array([[0.5, 0.5, 0.9, 0.1]])  # the target (1) ties with item 0, item 2 is strictly ahead
    assert M.retrieval_ranks(sim, targets=[1])[0] == 3
    assert M.retrieval_ranks(sim, targets=[1], ties="optimistic")[0] == 2
    with pytest.raises(ValueError, match="ties"):
        M.retrieval_ranks(sim, targets=[1], ties="random")


def test_correct_items_tied_with_each_other_do_not_push_down():
    sim = np.array([[0.5, 0.5, 0.1]])
    relevance = np.array([[True, True, False]])
    assert M.retrieval_ranks(sim, relevance=relevance)[0] == 1


def test_many_to_one_best_correct_item_counts():
    # video -> text, two captions per video: video v owns captions 2v and 2v+1.
    caption_video = np.array([0, 0, 1, 1])
    relevance = M.relevance_from_keys(np.arange(2), caption_video)  # [videos, captions]
    sim = np.array([[0.2, 0.6, 0.9, 0.1],   # v0: best own caption (0.6) is behind caption 2 -> rank 2
                    [0.3, 0.1, 0.2, 0.8]])  # v1: caption 3 first                             -> rank 1
    np.testing.assert_array_equal(M.retrieval_ranks(sim, relevance=relevance), [2, 1])


def test_duplicate_captions():
    # Captions 0 and 1 are the same string for videos 0 and 1, so their embeddings (and similarity
    # columns) are identical. Video->text with one correct caption per video: the duplicate is a
    # tied wrong item and, pessimistically, ranks ahead.
    sim_v2t = np.array([[0.9, 0.9, 0.1],
                        [0.8, 0.8, 0.2],
                        [0.1, 0.1, 0.7]])
    np.testing.assert_array_equal(M.retrieval_ranks(sim_v2t), [2, 2, 1])
    # Keyed by caption text, the shared string is correct for both videos and both rank 1.
    caption_text = np.array(["a dog runs", "a dog runs", "someone cooks"])
    video_texts = np.array(["a dog runs", "a dog runs", "someone cooks"])
    relevance = M.relevance_from_keys(video_texts, caption_text)
    np.testing.assert_array_equal(M.retrieval_ranks(sim_v2t, relevance=relevance), [1, 1, 1])


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        M.retrieval_ranks(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="no correct item"):
        M.retrieval_ranks(np.eye(2), relevance=np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="targets"):
        M.relevance_from_targets([0, 2], num_items=2)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    sim = torch.eye(3, requires_grad=True)
    assert M.retrieval_metrics(sim)["R@1"] == 1.0


# ----------------------------------------------------------------------------------- classification

def test_topk_accuracy_hand_computed():
    scores = np.array([[0.1, 0.7, 0.2, 0.0, 0.0, 0.0, 0.0],   # label 1: top-1
                       [0.5, 0.1, 0.4, 0.0, 0.0, 0.0, 0.0],   # label 2: second
                       [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])  # label 6: last of 7
    acc = M.topk_accuracy(scores, [1, 2, 6])
    assert acc["top1"] == pytest.approx(1 / 3)
    assert acc["top5"] == pytest.approx(2 / 3)
    # Official labels come as [N, 1].
    assert M.topk_accuracy(scores, np.array([[1], [2], [6]])) == acc


def test_topk_ties():
    scores = np.array([[0.5, 0.5, 0.0]])
    assert M.topk_accuracy(scores, [1], ks=(1,))["top1"] == 0.0
    assert M.topk_accuracy(scores, [1], ks=(1,), ties="optimistic")["top1"] == 1.0


def test_aggregate_views_layouts():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 5))  # [N, V, C]
    flat = logits.reshape(12, 5)  # the official clip-major [N * V, C]
    np.testing.assert_allclose(M.aggregate_views(logits), logits.mean(1))
    np.testing.assert_allclose(M.aggregate_views(flat, num_views=4), logits.mean(1))
    # A wrong view count must not silently mix clips.
    assert not np.allclose(M.aggregate_views(flat, num_views=2)[:3], logits.mean(1))
    with pytest.raises(ValueError):
        M.aggregate_views(flat, num_views=5)
    with pytest.raises(ValueError):
        M.aggregate_views(logits, num_views=2)


def test_aggregate_predictions_averages_logits_before_activation():
    logits = np.array([[[4.0, 0.0], [0.0, 1.0]]])  # one clip, two views
    probs = M.aggregate_predictions(logits, activation="softmax")
    np.testing.assert_allclose(probs, softmax([[2.0, 0.5]], axis=-1))
    assert not np.allclose(probs, softmax(logits, axis=-1).mean(1))  # not the mean of probabilities
    sig = M.aggregate_predictions(logits, activation="sigmoid")
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-np.array([[2.0, 0.5]]))))


# -------------------------------------------------------------------------------------- multi-label

def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(2)
    targets = rng.random((200, 6)) < 0.3
    scores = targets * 0.5 + rng.random((200, 6))
    m = M.multilabel_metrics(scores, targets)
    assert m["mAP"] == pytest.approx(average_precision_score(targets, scores, average="macro"))
    auc = roc_auc_score(targets, scores, average=None)
    assert m["AUC"] == pytest.approx(auc.mean())
    assert m["d-prime"] == pytest.approx(np.mean(np.sqrt(2) * norm.ppf(auc)))
    # d' is averaged per class, which differs from d' of the mean AUC.
    assert m["d-prime"] != pytest.approx(np.sqrt(2) * norm.ppf(auc.mean()), abs=1e-6)
    assert m["num_classes_ap"] == m["num_classes_auc"] == 6


def test_multilabel_undefined_classes_are_excluded():
    rng = np.random.default_rng(3)
    targets = rng.random((100, 4)) < 0.4
    targets[:, 2] = False  # no positive: AP and AUC undefined
    targets[:, 3] = True   # no negative: AP = 1, AUC undefined
    scores = rng.random((100, 4))
    m = M.multilabel_metrics(scores, targets)
    ap = [average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1, 3)]
    auc = [roc_auc_score(targets[:, c], scores[:, c]) for c in (0, 1)]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    assert m["AUC"] == pytest.approx(np.mean(auc))
    assert (m["num_classes"], m["num_classes_ap"], m["num_classes_auc"]) == (4, 3, 2)


def test_d_prime_closed_form():
    # Two unit-variance Gaussians d apart have AUC = Φ(d / √2), so d'(AUC) must give back d.
    for d in (0.0, 0.5, 1.0, 2.9):
        assert M.d_prime(norm.cdf(d / np.sqrt(2))) == pytest.approx(d, abs=1e-9)
    assert M.d_prime(1.0) == np.inf
    # And from sampled scores, through the whole metric.
    rng = np.random.default_rng(4)
    targets = np.zeros((20000, 1), dtype=bool)
    targets[:10000] = True
    scores = rng.normal(size=(20000, 1)) + 1.5 * targets
    assert M.multilabel_metrics(scores, targets)["d-prime"] == pytest.approx(1.5, abs=0.05)
