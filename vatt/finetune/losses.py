"""Fine-tuning losses as the official classifiers compute them (spec section 7).

Single-label (`backbones/video/factory.py:VideoModel.loss_fn`): Keras `CategoricalCrossentropy()` on the
*probabilities* (softmax of the logits) against one-hot labels smoothed by the data loader
((1 - a) y + a / C, a = 0.1, `processing.label_smoothing`). Keras' probability path renormalises the
probabilities and clips them to [1e-7, 1 - 1e-7] before the log, so a class pushed below 1e-7 stops
receiving gradient; that is the one difference from `F.cross_entropy(logits, label_smoothing=a)` (which
also spreads a / C differently: identically here, (1 - a) y + a / C).

Multi-label (`backbones/audio/factory.py:AudioModel.loss_fn`): sigmoid cross-entropy on the logits per
class, each sample's row multiplied by w_b = sum_c (y_bc / n_c) / sum_c y_bc with n_c = sum_b y_bc the
count of class c in the batch ("inverse label occurrence"), summed over classes, averaged over the batch.
Where the official code divides 0 by 0 (a sample without any label) it gets NaN and then zeroes the whole
batch loss; here such a sample gets weight 0 (named deviation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KERAS_EPSILON = 1e-7


def smooth_labels(targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * y + alpha / C on `[B, C]` one-hot (or mixed) targets."""
    if alpha == 0:
        return targets
    return (1.0 - alpha) * targets + alpha / targets.shape[-1]


def cross_entropy_on_probabilities(logits: torch.Tensor, targets: torch.Tensor,
                                   epsilon: float = KERAS_EPSILON) -> torch.Tensor:
    """Mean over the batch of -sum_c y_c log p_c with p = softmax(logits), renormalised and clipped to
    [epsilon, 1 - epsilon] (Keras `categorical_crossentropy(from_logits=False)`). Computed in float32."""
    p = torch.softmax(logits.float(), dim=-1)
    p = p / p.sum(dim=-1, keepdim=True)
    p = p.clamp(epsilon, 1.0 - epsilon)
    return -(targets.float() * p.log()).sum(dim=-1).mean()


def label_frequency_weights(targets: torch.Tensor) -> torch.Tensor:
    """`[B, C]` (multi-hot or mixed) targets -> `[B]` weights sum_c (y_bc / n_c) / sum_c y_bc, n_c = sum_b y_bc.

    Classes absent from the batch contribute 0 (the official `divide_no_nan`); a sample without labels
    gets weight 0.
    """
    y = targets.float()
    count = y.sum(dim=0, keepdim=True)  # [1, C]
    inverse = torch.where(count > 0, 1.0 / count.clamp_min(1e-12), torch.zeros_like(count))
    labels_per_sample = y.sum(dim=1)  # [B]
    weighted = (inverse * y).sum(dim=1)
    return torch.where(labels_per_sample > 0, weighted / labels_per_sample.clamp_min(1e-12),
                       torch.zeros_like(weighted))


def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                          label_frequency_weighting: bool = True) -> torch.Tensor:
    """Per-class sigmoid cross-entropy, optionally re-weighted per sample, summed over classes, averaged
    over the batch (the official AudioSet loss). Computed in float32."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")  # [B, C]
    if label_frequency_weighting:
        loss = loss * label_frequency_weights(targets)[:, None]
    return loss.sum(dim=1).mean()
