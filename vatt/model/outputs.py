"""What the models return: plain dataclasses of tensors."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class BackboneOutput:
    """One modality through its backbone.

    features_pooled: `[B, D]` the aggregation (AGG) token after the final LayerNorm: the clip's feature.
    features: the other tokens, on their grid (`[B, t, h, w, D]` video, `[B, n, D]` audio and text);
        `[B, kept, D]` when DropToken removed tokens in training.
    attention_mask: `[B, n]` 1 for real word tokens (text only).
    """

    features_pooled: torch.Tensor
    features: torch.Tensor
    attention_mask: torch.Tensor | None = None


@dataclass
class VATTOutput:
    """Backbone outputs per modality and the common-space embeddings (None where a modality was not given).

    video_va `[B, d_va]`, audio_va `[B, d_va]`: the fine video-audio space (`video.toaud`, `audio.tovid`);
    video_vt `[B, d_vt]`, text_vt `[B*L, d_vt]` (clip-major): the coarse video-text space
    (`video.totxt`, `text.tovid`). Embeddings are not L2-normalised; the loss and the evaluations do that.
    """

    video: BackboneOutput | None = None
    audio: BackboneOutput | None = None
    text: BackboneOutput | None = None
    video_va: torch.Tensor | None = None
    video_vt: torch.Tensor | None = None
    audio_va: torch.Tensor | None = None
    text_vt: torch.Tensor | None = None

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The common-space embeddings that are present, keyed `video→va`, `video→vt`, `audio→va`, `text→vt`."""
        names = {"video_va": "video→va", "video_vt": "video→vt", "audio_va": "audio→va", "text_vt": "text→vt"}
        return {names[f.name]: getattr(self, f.name) for f in fields(self)
                if f.name in names and getattr(self, f.name) is not None}


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # [B, C]
    probabilities: torch.Tensor  # softmax or sigmoid of the logits
    features_pooled: torch.Tensor  # [B, D]
    features: torch.Tensor
