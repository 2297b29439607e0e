"""The one inference path: a model in eval mode, under `torch.inference_mode` and the autocast policy
(`vatt.precision`), over batches of windows.

Everything that runs a model for its outputs rather than to train it goes through here: the embedding
API (`vatt.embed`), the held-out check of pre-training and the demo (`embed_clips`), the scoring of a
fine-tuned classifier (`vatt.eval.classification`), linear-probe features (`vatt.eval.linear_probe`)
and the collection index (`vatt.index`).

- `evaluating(model, dtype)`: the context every forward here runs in: eval mode (the FAC head's
  BatchNorm uses its moving statistics; the previous mode is restored), no autograd, autocast to `dtype`.
- `forward_modality`: one batch of one modality -> the model's outputs for it, float32 on the CPU
  (`modality_outputs` names them: features, va, vt, logits).
- `forward_windows`: many windows of one modality, `batch_size` at a time.
- `WindowBatcher`: collects the windows of many files and runs them `batch_size` at a time.
- `forward_views`: batches whose clips carry several views `[B, V, ...]` (test windows, crops), all views
  of a batch in one forward.
- `embed_clips`: batches of whole clips (video, audio and captions) -> their common-space embeddings.

The autocast policy is `vatt.precision`'s: "fp32" (default), "bf16" or "auto"; functions that take a
`precision` string resolve it for the model's device, those fed by a trainer take its dtype.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from vatt.precision import autocast, autocast_dtype

MODALITIES = ("video", "audio", "text")

Progress = Callable[[int, int], None]  # (done, total)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_modalities(model: nn.Module) -> tuple[str, ...]:
    """Modalities the model can embed: all three for tx_fac/ut_fac, its own one for a Classifier."""
    kind = getattr(getattr(model, "config", None), "kind", None)
    if kind in ("tx_fac", "ut_fac"):
        return MODALITIES
    if kind == "video_classifier":
        return ("video",)
    if kind == "audio_classifier":
        return ("audio",)
    raise TypeError(f"cannot embed with a {type(model).__name__}: expected VATT, UnifiedVATT or Classifier")


@contextlib.contextmanager
def evaluating(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[nn.Module]:
    """Eval mode (restored afterwards), `torch.inference_mode` and autocast to `dtype` (None: float32)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(model_device(model), dtype):
            yield model
    finally:
        model.train(was_training)


def forward_modality(model: nn.Module, modality: str, x: torch.Tensor,
                     precision: str = "fp32") -> dict[str, torch.Tensor]:
    """One batch of one modality through the model in eval mode -> float32 CPU tensors.

    Keys: "features" always; "va" (video, audio), "vt" (video, text) for VATT/UnifiedVATT; "logits" for a
    Classifier. `precision` is the autocast policy of `vatt.precision` ("fp32", "bf16" or "auto").
    """
    if modality not in model_modalities(model):
        takes = ", ".join(model_modalities(model))
        raise ValueError(f"this {type(model).__name__} cannot embed {modality} (it takes {takes})")
    device = model_device(model)
    with evaluating(model, autocast_dtype(precision, device)):
        result = modality_outputs(model, modality, x.to(device))
    return {k: v.float().cpu() for k, v in result.items()}


def modality_outputs(model: nn.Module, modality: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's outputs for one modality's input, by name (the forward only: no mode, no autocast)."""
    if model.config.kind in ("video_classifier", "audio_classifier"):
        out = model(x)
        return {"features": out.features_pooled, "logits": out.logits}
    out = model(**{modality: x})
    if modality == "video":
        return {"features": out.video.features_pooled, "va": out.video_va, "vt": out.video_vt}
    if modality == "audio":
        return {"features": out.audio.features_pooled, "va": out.audio_va}
    return {"features": out.text.features_pooled, "vt": out.text_vt}


def forward_windows(model: nn.Module, modality: str, x: torch.Tensor, batch_size: int, precision: str = "fp32",
                    progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """`forward_modality` over `x` (`[N, ...]` windows) `batch_size` at a time; outputs concatenated `[N, ...]`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts: dict[str, list[torch.Tensor]] = {}
    n = x.shape[0]
    for lo in range(0, n, batch_size):
        for k, v in forward_modality(model, modality, x[lo:lo + batch_size], precision).items():
            parts.setdefault(k, []).append(v)
        if progress:
            progress(min(lo + batch_size, n), n)
    return {k: torch.cat(v) for k, v in parts.items()}


class WindowBatcher:
    """Collects the windows of many files (each `[W, ...]`, under a key) and runs the model on
    `batch_size` of them at a time; `results[key]` are that file's outputs `[W, ...]`."""

    def __init__(self, model: nn.Module, modality: str, batch_size: int, precision: str = "fp32"):
        self.model, self.modality, self.batch_size, self.precision = model, modality, batch_size, precision
        self.pending: list[tuple[Hashable, torch.Tensor]] = []
        self.results: dict[Hashable, dict[str, torch.Tensor]] = {}

    def add(self, key: Hashable, windows: torch.Tensor) -> None:
        """Queue the windows of `key`; runs the queue once it holds `batch_size` windows."""
        self.pending.append((key, windows))
        if sum(w.shape[0] for _, w in self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the queued windows."""
        if not self.pending:
            return
        out = forward_windows(self.model, self.modality, torch.cat([w for _, w in self.pending]), self.batch_size,
                              self.precision)
        row = 0
        for key, w in self.pending:
            self.results[key] = {k: v[row:row + w.shape[0]] for k, v in out.items()}
            row += w.shape[0]
        self.pending = []


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()


def embed_clips(model: nn.Module, batches: Iterable[dict], device: torch.device,
                amp_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """Run `model` over collated clip batches (video, audio and captions together); float32 arrays keyed
    by what they hold -- the held-out check of pre-training and the demo's evaluation.

    Keys: video_va [N, d_va], video_vt [N, d_vt], audio_va [N, d_va], text_vt [N, d_vt] (caption 0),
    video_features [N, D] (the video backbone's pooled feature, for linear probes), audio_mask, text_mask [N],
    and `label_index` [N] when the batches carry it.
    """
    parts: dict[str, list[np.ndarray]] = {}
    with evaluating(model, amp_dtype):
        for batch in batches:
            out = model(video=batch["video"].to(device), audio=batch["audio"].to(device),
                        text=batch["text"].to(device))
            b = batch["video"].shape[0]
            arrays = {"video_va": out.video_va, "video_vt": out.video_vt, "audio_va": out.audio_va,
                      "text_vt": out.text_vt.reshape(b, -1, out.text_vt.shape[-1])[:, 0],
                      "video_features": out.video.features_pooled,
                      "audio_mask": batch["audio_mask"], "text_mask": batch["text_mask"]}
            if "label_index" in batch:
                arrays["label_index"] = torch.as_tensor(batch["label_index"])
            for key, value in arrays.items():
                parts.setdefault(key, []).append(_numpy(value))
    return {key: np.concatenate(value) for key, value in parts.items()}


def forward_views(model: nn.Module, batches: Iterable[dict], modality: str | tuple[str, ...],
                  run: Callable[[torch.Tensor], torch.Tensor],
                  *, dtype: torch.dtype | None = None, device: torch.device | None = None, carry: tuple[str, ...] = (),
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run `run(x)` (a forward of `model`) over batches whose `modality` holds every view of each clip
    (`[B, V, ...]`; several names: the first a batch has); the views of a batch go through as one batch
    `[B*V, ...]`.

    Returns the outputs as float32 `[N, V, ...]` and the batches' `carry` keys (e.g. labels) concatenated,
    as numpy arrays; `progress(clips done)` after each batch. Outputs are empty (shape `[0]`) for no batches.
    """
    device = device or model_device(model)
    parts: list[torch.Tensor] = []
    kept: dict[str, list[torch.Tensor]] = {k: [] for k in carry}
    done = 0
    with evaluating(model, dtype):
        for batch in batches:
            x = batch[modality if isinstance(modality, str) else next(k for k in modality if k in batch)]
            b, v = x.shape[:2]
            y = run(x.reshape(b * v, *x.shape[2:]).to(device))
            parts.append(y.float().reshape(b, v, *y.shape[1:]).cpu())
            for k in carry:
                kept[k].append(torch.as_tensor(batch[k]))
            done += b
            if progress:
                progress(done)
    outputs = torch.cat(parts).numpy() if parts else np.zeros((0,), np.float32)
    return outputs, {k: torch.cat(v).numpy() for k, v in kept.items() if v}
