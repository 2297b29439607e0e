"""The VATT assemblies: modality-specific (`tx_fac`), modality-agnostic (`ut_fac`), and the classifiers.

Both pre-training models run on any subset of modalities (video only, audio only, text only, any pair)
and return a `VATTOutput`: each backbone's pooled and token features and the common-space embeddings.
The embedding API of files and captions (`model.embed_video(...)`) sits above the model, in `vatt.embed`,
which binds it to the models `vatt.load` and `vatt.build_model` return: nothing here imports it.
"""
from __future__ import annotations

import torch
from torch import nn

from vatt.configs import ClassifierConfig, UnifiedConfig, VATTConfig
from vatt.model.backbones import audio_transformer, text_model, video_transformer
from vatt.model.heads import ClassificationHead, FACHead
from vatt.model.outputs import BackboneOutput, ClassifierOutput, VATTOutput
from vatt.model.unified import UnifiedTransformer


def flatten_captions(text: torch.Tensor) -> torch.Tensor:
    """`[B, L, n]` (L captions per clip) -> `[B*L, n]` clip-major, the layout the loss expects."""
    if text.dim() == 3:
        return text.reshape(-1, text.shape[-1])
    if text.dim() != 2:
        raise ValueError(f"text: expected shape [B, L, n_words] or [B*L, n_words], got {tuple(text.shape)}")
    return text


class _MultimodalModel(nn.Module):
    """Shared forward of the two pre-training models: backbones, then the FAC head."""

    head: FACHead

    def backbone(self, x: torch.Tensor, modality: str) -> BackboneOutput:
        raise NotImplementedError

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> VATTOutput:
        """video `[B, T, H, W, 3]` in [-1, 1]; audio `[B, N]` or `[B, N, 1]`; text ids `[B, L, n]` or `[B*L, n]`."""
        if video is None and audio is None and text is None:
            raise ValueError("give at least one of video=, audio=, text=")
        out = VATTOutput()
        if video is not None:
            out.video = self.backbone(video, "video")
            out.video_va, out.video_vt = self.head.video(out.video.features_pooled)
        if audio is not None:
            out.audio = self.backbone(audio, "audio")
            out.audio_va = self.head.audio(out.audio.features_pooled)
        if text is not None:
            out.text = self.backbone(flatten_captions(text), "text")
            out.text_vt = self.head.text(out.text.features_pooled)
        return out


class VATT(_MultimodalModel):
    """Modality-specific VATT (`tx_fac`): ViT + WaT/SpT + T5 backbones and the FAC head."""

    def __init__(self, cfg: VATTConfig):
        super().__init__()
        self.config = cfg
        self.video_backbone = video_transformer(cfg.video)
        self.audio_backbone = audio_transformer(cfg.audio)
        self.text_backbone = text_model(cfg.text)
        self.head = FACHead(cfg.head, self.video_backbone.d_out, self.audio_backbone.d_out, self.text_backbone.d_out)

    def backbone(self, x: torch.Tensor, modality: str) -> BackboneOutput:
        return getattr(self, f"{modality}_backbone")(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in ("video", "audio", "text"):
            getattr(self, f"{m}_backbone").set_grad_checkpointing(enable)


class UnifiedVATT(_MultimodalModel):
    """Modality-agnostic VATT (`ut_fac`): one shared Transformer and the FAC head."""

    def __init__(self, cfg: UnifiedConfig):
        super().__init__()
        self.config = cfg
        self.unified_backbone = UnifiedTransformer(cfg)
        d = self.unified_backbone.d_out
        self.head = FACHead(cfg.head, d, d, d)

    def backbone(self, x: torch.Tensor, modality: str) -> BackboneOutput:
        return self.unified_backbone(x, modality)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.unified_backbone.set_grad_checkpointing(enable)


class Classifier(nn.Module):
    """A video (ViT) or audio (WaT/SpT) backbone with a dropout + Dense(C) head, for fine-tuning."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.config = cfg
        if cfg.kind == "video_classifier":
            self.backbone = video_transformer(cfg.video)
        else:
            self.backbone = audio_transformer(cfg.audio)
        self.head = ClassificationHead(self.backbone.d_out, cfg.num_classes, cfg.classifier_dropout, cfg.output)

    @property
    def modality(self) -> str:
        return "video" if self.config.kind == "video_classifier" else "audio"

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        feats = self.backbone(x)
        logits, probs = self.head(feats.features_pooled)
        return ClassifierOutput(logits, probs, feats.features_pooled, feats.features)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
