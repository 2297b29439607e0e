"""The losses of VATT: pre-training's `AsymmetricNCE`, and the fine-tuned classifiers'.

## Pre-training

NCE for video-audio, MIL-NCE for video-text.

Reproduces `vatt/utils/train/objectives.py:AsymmetricNCE` of the official TF2 code, checked against
`shared/parity/official-tiny/loss/`. For each pair (video [B, D], other [B·L, D], clip-major):

  * both sides are L2-normalised the TF way (`l2_normalize`) and gathered over ranks for negatives;
  * positives: video b against its own L rows (L captions for text, L = 1 for audio), MIL-NCE;
  * candidate row of 2·B_all·L logits: [video b vs every other row] ++ [clip b's rows vs every
    video], so each positive appears in both halves;
  * per-clip loss = logsumexp(candidates) - logsumexp(positives), rescaled per rank by B/#valid;
  * total = loss_weight · (w_vt·L_vt + w_va·L_va) / (w_vt + w_va).

Deviation: the official code replaces NaN per-clip losses by 0. Here a NaN stays NaN so that the
trainer can report and skip the step; `zero_nan=True` restores the official behaviour. For finite
inputs the two agree, because masking uses -1e9 rather than -inf (parity README, quirk 5).

## Fine-tuning
As the official classifiers compute them (spec section 7).

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

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vatt.distributed import all_gather_with_grad, get_rank

LARGE_NUM = 1e9  # subtracted from masked logits (after dividing by tau), as the official code does


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """`tf.math.l2_normalize`: x·rsqrt(max(Σx², eps)) over the last dim.

    The eps bounds the squared norm, so a row with norm below 1e-6 is scaled by 1e6 rather than made
    unit length, and a zero row stays zero. `F.normalize` clamps the norm itself and differs there.
    """
    return x * torch.rsqrt(torch.clamp_min(x.pow(2).sum(dim=-1, keepdim=True), eps))


@dataclass
class NCETerm:
    """One pair's loss with the official intermediate values (names as in the parity npz files)."""
    loss: Tensor             # [] mean over the local clips, before the pair's weight
    per_sample_loss: Tensor  # [B] after masking, B/#valid rescaling (and NaN-zeroing if asked)
    sim_pos: Tensor          # [B, L] positive logits cos/tau, never masked
    logsumexp_pos: Tensor    # [B]
    sim_all: Tensor          # [B, 2·B_all·L] candidate logits after masking
    logsumexp_all: Tensor    # [B]


@dataclass
class NCELossOutput:
    total: Tensor                   # [] the value to minimise
    video_text: Optional[Tensor]    # [] w_vt·L_vt as the official metric; None if not computed
    video_audio: Optional[Tensor]   # [] w_va·L_va as the official metric; None if not computed
    terms: dict = field(default_factory=dict)  # "video_text" / "video_audio" -> NCETerm


def nce_loss(video: Tensor, other: Tensor, other_mask: Optional[Tensor] = None,
             temperature: float = 0.07, gather_negatives: bool = True,
             zero_nan: bool = False) -> NCETerm:
    """NCE (L = 1) or MIL-NCE (L > 1) of video [B, D] against `other` [B·L, D], clip-major.

    `other_mask` [B] is 1 for clips whose `other` side is valid (None = all valid). An invalid
    clip's `other` rows are masked as negatives everywhere, its own row is masked in the second
    half, and its loss is dropped; its video still serves as a negative for the other clips.
    With `gather_negatives`, both sides (and the mask) are gathered over all ranks; each rank then
    averages over its own B clips only, as the official per-replica loss does.
    """
    batch = video.shape[0]
    if (video.ndim != 2 or other.ndim != 2 or other.shape[0] % batch
            or other.shape[1] != video.shape[1]):
        raise ValueError(f"expected video [B, D] and other [B·L, D], got {tuple(video.shape)} "
                         f"and {tuple(other.shape)}")
    n_pos = other.shape[0] // batch  # L
    # Float32 at least, like the official loss: -1e9 masking and logsumexp need it.
    dtype = torch.promote_types(video.dtype, torch.float32)
    video, other = video.to(dtype), other.to(dtype)
    mask = torch.ones(batch, dtype=dtype, device=video.device) if other_mask is None \
        else other_mask.to(dtype).reshape(batch)

    video, other = l2_normalize(video), l2_normalize(other)
    gather = all_gather_with_grad if gather_negatives else (lambda x: x)
    video_all, other_all, mask_all = gather(video), gather(other), gather(mask)
    batch_all = video_all.shape[0]
    with torch.autocast(video.device.type, enabled=False):  # autocast would use half precision
        video_vs_other_all = video @ other_all.T  # [B, B_all·L]
        video_all_vs_other = video_all @ other.T  # [B_all, B·L]

    # First half: local video b vs every other row, [B, B_all, L].
    video_vs_other_all = video_vs_other_all.view(batch, batch_all, n_pos) / temperature
    # Positives are the local clip's own block; with gathering it sits at this rank's offset.
    offset = get_rank() * batch if batch_all != batch else 0
    own = torch.arange(batch, device=video.device)
    sim_pos = video_vs_other_all[own, own + offset]  # [B, L]
    video_vs_other_all = video_vs_other_all - (1 - mask_all)[None, :, None] * LARGE_NUM

    # Second half: local clip b's rows vs every video, [B_all, B, L] -> [B, B_all, L].
    video_all_vs_other = video_all_vs_other.view(batch_all, batch, n_pos) / temperature
    video_all_vs_other = video_all_vs_other.transpose(0, 1) - (1 - mask)[:, None, None] * LARGE_NUM

    sim_all = torch.cat([video_vs_other_all, video_all_vs_other], dim=1).reshape(batch, -1)
    logsumexp_pos = torch.logsumexp(sim_pos, dim=1)
    logsumexp_all = torch.logsumexp(sim_all, dim=1)

    # Per-rank rescaling by B/#valid (divide-no-nan: 0 when nothing is valid), so that the mean
    # over all B rows equals the mean over the valid ones.
    n_valid = mask.sum()
    scale = torch.where(n_valid > 0, batch / n_valid, torch.zeros_like(n_valid))
    per_sample_loss = (logsumexp_all - logsumexp_pos) * mask * scale
    if zero_nan:
        per_sample_loss = torch.where(torch.isnan(per_sample_loss),
                                      torch.zeros_like(per_sample_loss), per_sample_loss)
    return NCETerm(per_sample_loss.mean(), per_sample_loss, sim_pos, logsumexp_pos,
                   sim_all, logsumexp_all)


class AsymmetricNCE(nn.Module):
    """The official VATT pre-training loss (`AsymmetricNCE`, default of tx_fac and ut_fac).

    Inputs are the FAC-head outputs: video_va [B, D_va] and audio_va [B, D_va] (`video.toaud`,
    `audio.tovid`), video_vt [B, D_vt] and text_vt [B·L, D_vt] (`video.totxt`, `text.tovid`, row
    b·L+l = caption l of clip b), audio_mask / text_mask float [B] (None = all valid).

    total = loss_weight · (w_vt·L_vt + w_va·L_va) / (w_vt + w_va). A pair whose weight is 0 or whose
    inputs are not given is left out of both sums, so video-text-only training gives total = L_vt
    (times loss_weight). The official loss returns the total without `loss_weight`, and its
    `loss_fn` multiplies it in; here `total` includes it.
    """

    def __init__(self, temperature: float = 0.07, vid_txt_weight: float = 1.0,
                 vid_aud_weight: float = 1.0, loss_weight: float = 1.0,
                 gather_negatives: bool = True, zero_nan: bool = False):
        super().__init__()
        self.temperature = temperature
        self.vid_txt_weight = vid_txt_weight
        self.vid_aud_weight = vid_aud_weight
        self.loss_weight = loss_weight
        self.gather_negatives = gather_negatives
        self.zero_nan = zero_nan  # official: NaN per-clip losses become 0 (hides divergence)

    def forward(self, video_va: Optional[Tensor] = None, audio_va: Optional[Tensor] = None,
                video_vt: Optional[Tensor] = None, text_vt: Optional[Tensor] = None,
                audio_mask: Optional[Tensor] = None,
                text_mask: Optional[Tensor] = None) -> NCELossOutput:
        # Same order as the official sum: video-text, then video-audio.
        pairs = {"video_text": (video_vt, text_vt, text_mask, self.vid_txt_weight),
                 "video_audio": (video_va, audio_va, audio_mask, self.vid_aud_weight)}
        terms, weighted, weights = {}, {}, []
        for name, (video, other, mask, weight) in pairs.items():
            if (video is None) != (other is None):
                raise ValueError(f"{name}: give both embeddings or neither")
            if video is None or weight <= 0:
                continue
            terms[name] = nce_loss(video, other, mask, self.temperature,
                                   self.gather_negatives, self.zero_nan)
            weighted[name] = terms[name].loss * weight
            weights.append(weight)
        if not weighted:
            raise ValueError("no pair to compute: give video_vt+text_vt and/or video_va+audio_va "
                             "with a positive weight")
        total = sum(weighted.values()) / sum(weights) * self.loss_weight
        return NCELossOutput(total, weighted.get("video_text"), weighted.get("video_audio"), terms)


# ---------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------
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
