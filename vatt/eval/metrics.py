"""Evaluation metrics: retrieval ranks and recalls, top-k accuracy, multi-label mAP / AUC / d-prime.

Everything here works on plain arrays (numpy, or torch tensors, which are converted) and returns
plain Python floats in dicts, so a caller can log, compare or dump them to JSON without this package.

Conventions shared by every function:
- Ranks are 1-based: the correct item ranked first has rank 1.
- Recalls and accuracies are fractions in [0, 1]; tables multiply by 100 when they show percent.
- **Ties** (equal scores) are broken *pessimistically* by default: every wrong item or class whose score
  equals the best correct one is counted as ranked ahead of it. A collapsed model (all similarities
  equal) therefore scores R@1 = 0 and MedR = number of items, rather than looking perfect. The official
  code (`measures.compute_retrieval_metrics`, with `np.argsort(-x)`, not `tf.argsort`) leaves ties to
  numpy's unstable quicksort: in practice the lower item index wins, which favours query 0 on the
  diagonal and makes a degenerate model score better the smaller the index of its ground truth.
  `ties="optimistic"` counts tied wrong items as ranked behind (the best case, and what Keras'
  `in_top_k` does for top-k accuracy). With continuous embeddings from a real model ties essentially
  never occur, so the rule only decides how degenerate inputs are scored.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy.special import expit, softmax
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

TIE_RULES = ("pessimistic", "optimistic")


def to_numpy(x, dtype=None) -> np.ndarray:
    """Array view of a numpy array, a (possibly CUDA, possibly grad-requiring) torch tensor, or a list."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")


def _check_finite(name: str, x: np.ndarray) -> None:
    # NaN compares False with everything, so a NaN score would silently get rank 1.
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------

def relevance_from_targets(targets, num_items: int) -> np.ndarray:
    """Boolean relevance [num_queries, num_items] with one correct item per query (`targets[q]`)."""
    targets = to_numpy(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be [num_queries], got shape {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer item indices, got dtype {targets.dtype}")
    if targets.size and (targets.min() < 0 or targets.max() >= num_items):
        raise ValueError(f"targets must lie in [0, {num_items}), got range [{targets.min()}, {targets.max()}]")
    relevance = np.zeros((targets.shape[0], num_items), dtype=bool)
    relevance[np.arange(targets.shape[0]), targets] = True
    return relevance


def relevance_from_keys(query_keys: Sequence, item_keys: Sequence) -> np.ndarray:
    """Boolean relevance [Q, I]: item i is correct for query q when `query_keys[q] == item_keys[i]`.

    This expresses every many-to-one mapping with one rule. Text→video with several captions per video:
    query keys are the captions' video ids, item keys the videos' ids. Video→text: the same keys swapped,
    so each video has several correct captions. Several videos per caption (a caption string shared by
    several videos, as happens in MSR-VTT): key the captions by their text and map each video to the set
    of texts it has — or build the matrix directly.
    """
    query_keys = np.asarray(query_keys)
    item_keys = np.asarray(item_keys)
    if query_keys.ndim != 1 or item_keys.ndim != 1:
        raise ValueError(f"keys must be 1-D, got shapes {query_keys.shape} and {item_keys.shape}")
    return query_keys[:, None] == item_keys[None, :]


def retrieval_ranks(similarity, targets=None, relevance=None, ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of the best-ranked correct item for each query.

    Args:
        similarity: [num_queries, num_items], higher is more similar.
        targets: [num_queries] int, the single correct item of each query. When neither `targets` nor
            `relevance` is given the matrix must be square and the diagonal is correct (official protocol).
        relevance: [num_queries, num_items] bool, all correct items of each query (many-to-one mappings).
            A query is answered as soon as any one of its correct items is retrieved.
        ties: "pessimistic" (default) or "optimistic", see the module docstring. Correct items tied with
            each other never push each other down.

    Returns:
        int64 [num_queries] ranks in [1, num_items].
    """
    _check_ties(ties)
    similarity = to_numpy(similarity, dtype=np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [num_queries, num_items], got shape {similarity.shape}")
    _check_finite("similarity", similarity)
    num_queries, num_items = similarity.shape
    if targets is not None and relevance is not None:
        raise ValueError("give targets or relevance, not both")
    if relevance is None:
        if targets is None:
            if num_queries != num_items:
                raise ValueError(
                    f"without targets the similarity must be square (diagonal ground truth), got {similarity.shape}")
            targets = np.arange(num_queries)
        relevance = relevance_from_targets(targets, num_items)
    relevance = to_numpy(relevance, dtype=bool)
    if relevance.shape != similarity.shape:
        raise ValueError(f"relevance shape {relevance.shape} != similarity shape {similarity.shape}")
    has_correct = relevance.any(axis=1)
    if not has_correct.all():
        raise ValueError(f"{int((~has_correct).sum())} queries have no correct item, e.g. query "
                         f"{int(np.flatnonzero(~has_correct)[0])}")

    best_correct = np.where(relevance, similarity, -np.inf).max(axis=1, keepdims=True)  # [Q, 1]
    wrong = ~relevance
    # No correct item can score above best_correct, so everything strictly above it is wrong.
    ahead = (similarity > best_correct).sum(axis=1)
    if ties == "pessimistic":
        ahead = ahead + ((similarity == best_correct) & wrong).sum(axis=1)
    return (ahead + 1).astype(np.int64)


def recall_metrics_from_ranks(ranks, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k (fraction of queries with rank <= k), MedR and MeanR (1-based) from ranks."""
    ranks = to_numpy(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    metrics = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    metrics["MedR"] = float(np.median(ranks))  # the mean of the two middle ranks for an even count
    metrics["MeanR"] = float(np.mean(ranks))
    return metrics


def retrieval_metrics(similarity, targets=None, relevance=None, ties: str = "pessimistic",
                      ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """R@1, R@5, R@10 (fractions), median and mean rank (1-based) of a similarity matrix.

    See `retrieval_ranks` for the arguments. With the default (square matrix, diagonal ground truth,
    no ties) R@k and MedR equal the official `measures.compute_retrieval_metrics`; MeanR is extra.
    """
    return recall_metrics_from_ranks(retrieval_ranks(similarity, targets, relevance, ties), ks)


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------

def aggregate_views(scores, num_views: int | None = None):
    """Average per-view scores into per-sample scores.

    Accepts [N, V, C] (mean over V), or [N * V, C] with `num_views=V` where the V views of a sample are
    consecutive rows (the layout of the official `PredictionAggregator`, which reshapes to [-1, V, C]).
    [N, C] with num_views None or 1 is returned unchanged. Works for numpy arrays and torch tensors.
    """
    shape = tuple(scores.shape)
    if len(shape) == 3:
        if num_views is not None and num_views != shape[1]:
            raise ValueError(f"num_views={num_views} but scores have shape {shape} ([N, V, C])")
        return scores.mean(1)
    if len(shape) != 2:
        raise ValueError(f"scores must be [N, C], [N*V, C] or [N, V, C], got shape {shape}")
    if num_views is None or num_views == 1:
        return scores
    if shape[0] % num_views:
        raise ValueError(f"{shape[0]} rows are not a multiple of num_views={num_views}")
    return scores.reshape(shape[0] // num_views, num_views, shape[1]).mean(1)


def aggregate_predictions(logits, num_views: int | None = None, activation: str = "softmax") -> np.ndarray:
    """Official test-time aggregation for fine-tuned classifiers: mean *logits* over views, then the
    activation ("softmax" for single-label video, "sigmoid" for multi-label audio, "none" for logits).

    Averaging logits is not averaging probabilities; the linear probe averages softmax outputs instead
    (see `vatt.eval.linear_probe`), each as the official code does.
    """
    mean_logits = to_numpy(aggregate_views(to_numpy(logits, dtype=np.float64), num_views))
    if activation == "softmax":
        return softmax(mean_logits, axis=-1)
    if activation == "sigmoid":
        return expit(mean_logits)
    if activation == "none":
        return mean_logits
    raise ValueError(f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}")


def class_ranks(scores, labels, ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of the true class of each sample among the C class scores [N, C]."""
    _check_ties(ties)
    scores = to_numpy(scores, dtype=np.float64)
    labels = to_numpy(labels).astype(np.int64).reshape(-1)  # accepts [N] or the official [N, 1]
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be [N, C] with N = len(labels) = {labels.shape[0]}, got {scores.shape}")
    _check_finite("scores", scores)
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]})")
    true_score = scores[np.arange(len(labels)), labels][:, None]
    ahead = (scores > true_score).sum(axis=1)
    if ties == "pessimistic":
        ahead = ahead + (scores == true_score).sum(axis=1) - 1  # minus the true class itself
    return (ahead + 1).astype(np.int64)


def topk_accuracy(scores, labels, ks: Iterable[int] = (1, 5), ties: str = "pessimistic") -> dict[str, float]:
    """Top-k accuracies {"top1": ..., "top5": ...} as fractions, from scores [N, C] and int labels [N].

    Scores may be logits or probabilities (same order). Aggregate views first (`aggregate_predictions`).
    Keras `TopKCategoricalAccuracy` (used for the official fine-tuning numbers) counts ties as hits,
    i.e. `ties="optimistic"`; the default here is pessimistic, as for retrieval.
    """
    ranks = class_ranks(scores, labels, ties)
    return {f"top{k}": float(np.mean(ranks <= k)) for k in ks}


# --------------------------------------------------------------------------------------------------
# Multi-label (AudioSet)
# --------------------------------------------------------------------------------------------------

def d_prime(auc):
    """d' = √2·Φ⁻¹(AUC): the separation, in standard deviations, of two unit-variance Gaussians whose
    ROC has this area. AUC = 1 gives +inf and AUC = 0.5 gives 0."""
    return np.sqrt(2.0) * norm.ppf(auc)


def multilabel_metrics(scores, targets) -> dict[str, float]:
    """mAP, AUC and d-prime as the official `measures.compute_map_auc_dprime` (AudioSet protocol).

    Args:
        scores: [N, C] per-class scores (sigmoid probabilities or logits: both metrics only use the order).
        targets: [N, C] binary (multi-hot) ground truth.

    Each metric is computed per class with scikit-learn (`average_precision_score`, `roc_auc_score`)
    and averaged over classes with equal weight; d' is computed per class from that class's AUC and then
    averaged, not derived from the mean AUC.

    Deviation from the official code, for undefined classes only: AP needs at least one positive and
    AUC at least one positive and one negative. The official code feeds every class to sklearn, which
    (depending on the version) raises, or returns AP 0 / AUC NaN with a warning. Here mAP averages the
    classes with >= 1 positive, AUC and d' the classes with >= 1 positive and >= 1 negative; the counts
    are returned as `num_classes_ap` / `num_classes_auc` so a partial evaluation is visible. On the full
    AudioSet eval set every class is defined and the numbers equal the official ones. A class with
    AUC = 1 has d' = +inf, as in the official code; it is not clipped.
    """
    scores = to_numpy(scores, dtype=np.float64)
    targets = to_numpy(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be [N, C], got {scores.shape} and {targets.shape}")
    _check_finite("scores", scores)
    targets = targets.astype(bool)
    positives = targets.sum(axis=0)
    has_pos = positives > 0
    has_both = has_pos & (positives < targets.shape[0])
    if not has_pos.any():
        raise ValueError("no class has a positive example: mAP is undefined")

    ap = [average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(has_pos)]
    auc = np.array([roc_auc_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(has_both)])
    return {
        "mAP": float(np.mean(ap)),
        "AUC": float(np.mean(auc)) if auc.size else float("nan"),
        "d-prime": float(np.mean(d_prime(auc))) if auc.size else float("nan"),
        "num_classes": int(targets.shape[1]),
        "num_classes_ap": int(has_pos.sum()),
        "num_classes_auc": int(has_both.sum()),
    }
