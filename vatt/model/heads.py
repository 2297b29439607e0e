"""The FAC head (fine-and-coarse common spaces, `heads/bridge.py:FACHead`) and the fine-tuning classifier head.

    video -> va:  vid_to_hid Dense(512, no bias) -> [BN -> ReLU -> Dense(512, no bias) -> BN]
    va -> vt:     [ReLU -> Dense(256, no bias) -> BN] applied to the video va embedding (coarse from fine)
    audio -> va:  Dense(512) with bias, linear
    text -> vt:   Dense(256) with bias, linear
BatchNorm momentum 0.9 in Keras terms (torch momentum 0.1), eps 1e-5, with scale and centre; in training
it normalises with batch statistics (over all ranks in pre-training, as the official cross-replica BN), in
eval with the moving statistics. The moving variance is updated with the biased batch variance, as Keras
does (`KerasBatchNorm1d`); torch's BatchNorm stores the unbiased one, n/(n-1) larger.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vatt.configs import FACHeadConfig


class KerasBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d in training mode as Keras' SyncBatchNormalization computes it.

    Batch statistics from sums, mean = Σx/n and var = Σx²/n - mean² (biased), as the official cross-replica
    BN does (and `GlobalBatchNorm1d` over ranks); y = x·inv + (β - mean·inv) with inv = γ/√(var + ε); and
    moving += momentum·(batch statistic - moving) with the *biased* variance (torch stores the unbiased
    one, n/(n-1) larger). With a batch mean far from zero, Σx²/n - mean² loses digits in float32, in the
    official code as here; torch's two-pass variance differs from it by ~1e-5 relative after the FAC head.
    Eval mode, parameters and buffers are those of `nn.BatchNorm1d`, so state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"{type(self).__name__} expects [B, C], got shape {tuple(x.shape)}")
        xf = x.float()
        n = xf.shape[0]
        mean = xf.sum(0) / n
        var = (xf * xf).sum(0) / n - mean * mean
        if self.track_running_stats:
            self.update_moving_statistics(mean.detach(), var.detach())
        return self.normalize(xf, mean, var).to(x.dtype)

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        inv = torch.rsqrt(var + self.eps)
        if self.affine:
            inv = inv * self.weight
            return x * inv + (self.bias - mean * inv)
        return x * inv - mean * inv

    @torch.no_grad()
    def update_moving_statistics(self, mean: torch.Tensor, biased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(biased_var.to(self.running_var.dtype), momentum)


class FACHead(nn.Module):
    def __init__(self, cfg: FACHeadConfig, d_video: int, d_audio: int, d_text: int):
        super().__init__()
        bn = dict(eps=cfg.bn_eps, momentum=cfg.bn_momentum)
        self.video_to_hidden = nn.Linear(d_video, cfg.d_va, bias=False)
        self.hidden_to_va_pre_bn = KerasBatchNorm1d(cfg.d_va, **bn)
        self.hidden_to_va = nn.Linear(cfg.d_va, cfg.d_va, bias=False)
        self.hidden_to_va_bn = KerasBatchNorm1d(cfg.d_va, **bn)
        self.va_to_vt = nn.Linear(cfg.d_va, cfg.d_vt, bias=False)
        self.va_to_vt_bn = KerasBatchNorm1d(cfg.d_vt, **bn)
        self.audio_to_va = nn.Linear(d_audio, cfg.d_va)
        self.text_to_vt = nn.Linear(d_text, cfg.d_vt)

    def video(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, D_v]` -> (video_va `[B, d_va]`, video_vt `[B, d_vt]`)."""
        h = self.video_to_hidden(pooled)
        va = self.hidden_to_va_bn(self.hidden_to_va(F.relu(self.hidden_to_va_pre_bn(h))))
        vt = self.va_to_vt_bn(self.va_to_vt(F.relu(va)))
        return va, vt

    def audio(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.audio_to_va(pooled)

    def text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text_to_vt(pooled)


class ClassificationHead(nn.Module):
    """Dropout -> Dense(C) on the pooled feature (`classification/weights`)."""

    def __init__(self, d_in: int, num_classes: int, dropout_rate: float, output: str = "softmax"):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate)
        self.classification = nn.Linear(d_in, num_classes)
        self.output = output
        if output == "sigmoid" and num_classes > 1:
            # Multi-label (AudioSet): the official bias init -log(C - 1), i.e. a prior of 1/C per class.
            nn.init.constant_(self.classification.bias, -math.log(num_classes - 1))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classification(self.dropout(pooled))
        probs = torch.sigmoid(logits) if self.output == "sigmoid" else torch.softmax(logits, dim=-1)
        return logits, probs
