"""Scoring a classifier the official way: every view of every clip, logits averaged, then the metrics.

Each validation sample carries all its views `[V, ...]` (video: `num_windows` windows x 3 crops = 12
officially; audio: 4 windows; images: 1). The model sees the views as a batch; the logits of a clip's
views are averaged before the softmax (single-label) or sigmoid (multi-label), as the official
`PredictionAggregator`. Single-label: top-1 / top-5 (pessimistic ties; Keras' `TopKCategoricalAccuracy`
counts ties as hits, which only differs for degenerate, tied logits). Multi-label: mAP, AUC, d-prime per
class then averaged (`vatt.eval.metrics.multilabel_metrics`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vatt.data.sampling import collate
from vatt.distributed import get_rank, get_world_size, is_distributed
from vatt.eval.metrics import aggregate_predictions, multilabel_metrics, topk_accuracy
from vatt.inference import forward_views


@dataclass(frozen=True)
class ClassificationProtocol:
    num_clips: int
    num_views: int  # views per clip whose logits are averaged
    aggregation: str
    multi_label: bool
    ties: str = "pessimistic"

    def describe(self) -> str:
        metrics = "mAP / AUC / d-prime" if self.multi_label else "top-1 / top-5"
        return (f"{self.num_clips} clips x {self.num_views} views, {self.aggregation}; {metrics}"
                + ("" if self.multi_label else f", {self.ties} ties"))


@dataclass
class ClassificationResult:
    metrics: dict[str, float]
    protocol: ClassificationProtocol

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "protocol": asdict(self.protocol)}


def predict(model: nn.Module, dataset, *, batch_size: int = 8, num_workers: int = 0, device: torch.device | None = None,
            amp_dtype: torch.dtype | None = None, max_clips: int = 0,
            progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits `[N, V, C]` (float32) of every view of every clip, and the labels (`[N]` int or `[N, C]`).

    The dataset yields validation samples (`video` `[V, T, H, W, 3]` or `audio` `[V, N]`, and `label`).
    The views of a batch go through the model together (`vatt.inference.forward_views`).
    Under torch.distributed each rank scores every world_size-th clip and the results are gathered.
    """
    n = len(dataset) if not max_clips else min(max_clips, len(dataset))
    rank, world = get_rank(), get_world_size()
    indices = list(range(rank, n, world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         collate_fn=collate, num_workers=num_workers)
    logits, carried = forward_views(model, loader, ("video", "audio"), lambda x: model(x).logits, dtype=amp_dtype,
                                    device=device, carry=("label",),
                                    progress=(lambda done: progress(done * world, n)) if progress else None)
    if not len(logits):
        logits = np.zeros((0, 1, 1), np.float32)
    label_arr = carried.get("label", np.zeros((0,), np.int64))
    if is_distributed() and world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (indices, logits, label_arr))
        order = np.argsort(np.concatenate([g[0] for g in gathered]))
        logits = np.concatenate([g[1] for g in gathered])[order]
        label_arr = np.concatenate([g[2] for g in gathered])[order]
    return logits, label_arr


def classification_metrics(logits: np.ndarray, labels: np.ndarray, multi_label: bool) -> ClassificationResult:
    """Official aggregation (mean logits over views, then softmax / sigmoid) and metrics.

    logits `[N, V, C]` (or `[N, C]`); labels `[N]` class indices or `[N, C]` multi-hot.
    Single-label keys: top1, top5 (fractions); multi-label: mAP, AUC, d-prime (+ class counts).
    """
    logits = np.asarray(logits, dtype=np.float64)
    views = logits.shape[1] if logits.ndim == 3 else 1
    activation = "sigmoid" if multi_label else "softmax"
    scores = aggregate_predictions(logits, activation=activation)
    if multi_label:
        metrics = multilabel_metrics(scores, labels)
    else:
        k = min(5, scores.shape[1])
        metrics = topk_accuracy(scores, labels, ks=(1, k))
        if k != 5:  # fewer than 5 classes: top-5 is trivially 1
            metrics["top5"] = metrics[f"top{k}"] if k > 1 else 1.0
            if k > 1:
                del metrics[f"top{k}"]
    protocol = ClassificationProtocol(num_clips=int(logits.shape[0]), num_views=views, multi_label=multi_label,
                                      aggregation=f"mean logits over {views} view(s), then {activation}")
    return ClassificationResult(metrics={k: float(v) for k, v in metrics.items()}, protocol=protocol)


def evaluate_classifier(model: nn.Module, dataset, *, multi_label: bool | None = None,
                        **kwargs) -> ClassificationResult:
    """`predict` then `classification_metrics`; `multi_label` defaults to the dataset's."""
    logits, labels = predict(model, dataset, **kwargs)
    if multi_label is None:
        multi_label = bool(getattr(dataset, "multi_label", labels.ndim == 2))
    return classification_metrics(logits, labels, multi_label)
