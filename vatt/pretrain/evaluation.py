"""Held-out checks during and after pre-training: embed clips, then zero-shot retrieval.

One window per clip and the first caption of each clip (the periodic check is a learning signal, not
the official 4-window protocol of `vatt eval retrieval`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed_clips(model: nn.Module, batches: Iterable[dict], device: torch.device,
                amp_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """Run `model` in eval mode over collated batches; float32 arrays keyed by what they hold.

    Keys: video_va [N, d_va], video_vt [N, d_vt], audio_va [N, d_va], text_vt [N, d_vt] (caption 0),
    video_features [N, D] (the video backbone's pooled feature, for linear probes), audio_mask, text_mask [N],
    and `label_index` [N] when the batches carry it.
    """
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
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
            parts.setdefault(key, []).append(value.float().cpu().numpy() if value.is_floating_point()
                                             else value.cpu().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def zero_shot_retrieval(emb: dict[str, np.ndarray]) -> dict[str, float]:
    """text→video and audio→video R@1/R@5/R@10/MedR (R@k as fractions) over the clips that have text/audio.

    Text queries search all videos; audio queries search the videos of clips that have audio.
    """
    from vatt.eval.retrieval import zero_shot_retrieval as retrieval

    metrics: dict[str, float] = {}
    with_text = np.flatnonzero(emb["text_mask"] > 0)
    with_audio = np.flatnonzero(emb["audio_mask"] > 0)
    results = []
    if len(with_text):
        results += retrieval(video_text=emb["video_vt"], text=emb["text_vt"][with_text], caption_video=with_text,
                             directions=("text->video",), modes=("embd",), split="heldout")
    if len(with_audio):
        results += retrieval(video_audio=emb["video_va"][with_audio], audio=emb["audio_va"][with_audio],
                             directions=("audio->video",), modes=("embd",), split="heldout")
    for r in results:
        for key in ("R@1", "R@5", "R@10", "MedR"):
            metrics[f"{r.protocol.direction}/{key}"] = float(r.metrics[key])
        metrics[f"{r.protocol.direction}/num_items"] = float(r.protocol.num_items)
    return metrics
