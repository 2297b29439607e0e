"""Zero-shot cross-modal retrieval from common-space embeddings (the official protocol, §8 of the spec).

Inputs are embeddings already computed by the model (in eval mode):
- video windows `[N, W, D]`: `video.totxt` for text, `video.toaud` for audio (different FAC spaces);
- text `[T, D]`: `text.tovid`, one embedding per caption;
- audio `[N, D]` or `[N, W, D]`: `audio.tovid`.

A clip seen through W windows is compared with a query in one of the two official modes:
- `embd`: average the W window embeddings, L2-normalise, dot product with the L2-normalised query;
- `cosine`: average of the W cosine similarities between the query and each window.
With W = 1 both are the cosine similarity. Both modes are always computed by the official code and
reported as `<direction>_embd_*` and `<direction>_cosine_*`.

The official code reports text→video and audio→video with one caption per video. video→text is extra
(not an official number); with several captions per video a video is answered when any of its captions
is retrieved. Metrics come from `vatt.eval.metrics` (R@k as fractions, 1-based ranks, pessimistic ties).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vatt.eval.metrics import recall_metrics_from_ranks, relevance_from_targets, retrieval_ranks, to_numpy

MODES = ("embd", "cosine")
DIRECTIONS = ("text->video", "video->text", "audio->video")
OFFICIAL_DIRECTIONS = ("text->video", "audio->video")


@dataclass(frozen=True)
class RetrievalProtocol:
    """Everything needed to say what a retrieval number means."""

    split: str  # dataset and split, e.g. "msrvtt-1k/test"
    direction: str  # "text->video", "video->text" or "audio->video"
    mode: str  # "embd" or "cosine"
    num_queries: int
    num_items: int
    num_windows: int  # video windows per clip (4 in the official protocol)
    captions_per_video: float  # mean captions per video; 1 for text-free directions and officially
    ties: str  # tie rule of the ranks, see vatt.eval.metrics
    official: bool  # whether the official code reports this direction

    def describe(self) -> str:
        caps = f", {self.captions_per_video:g} captions/video" if self.direction != "audio->video" else ""
        return (f"{self.split}: zero-shot {self.direction}, {self.mode} mode, {self.num_windows} video "
                f"windows{caps}, {self.num_queries} queries x {self.num_items} items, ranks 1-based, "
                f"{self.ties} ties{'' if self.official else ', not an official metric'}")


@dataclass(frozen=True)
class RetrievalResult:
    """Metrics of one direction in one mode, with its protocol.

    `metrics` keys: "R@1", "R@5", "R@10" (fractions), "MedR", "MeanR" (1-based ranks).
    `ranks`: the 1-based rank of every query, for further analysis (not included in `as_dict`).
    """

    protocol: RetrievalProtocol
    metrics: dict[str, float]
    ranks: np.ndarray = field(repr=False, compare=False)

    def as_dict(self) -> dict:
        """JSON-ready: {"protocol": {...}, "metrics": {...}}."""
        return {"protocol": asdict(self.protocol), "metrics": dict(self.metrics)}


def _windows(x, name: str) -> np.ndarray:
    """[N, D] -> [N, 1, D]; [N, W, D] unchanged; as float64 so both modes see the same rounding."""
    x = to_numpy(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"{name} must be [N, D] or [N, W, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    # A zero vector stays zero (its similarity to everything is 0), as the official `normalize_fn`.
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def clip_similarity(queries, items, mode: str = "embd") -> np.ndarray:
    """Similarity [Q, N] between queries [Q, D] / [Q, Wq, D] and items [N, D] / [N, W, D].

    `embd`: normalise(mean of windows) · normalise(mean of windows).
    `cosine`: mean over all window pairs of the cosine similarity. Because the mean of dot products is
    the dot product of the means, this is (mean of normalised windows) · (mean of normalised windows),
    which costs one matrix product instead of W. With text queries (Wq = 1) it is exactly the official
    `average_similarities` path.

    The official code stores windows flattened as [N * W, D], clip-major; pass `x.reshape(N, W, D)`.
    """
    q = _windows(queries, "queries")
    v = _windows(items, "items")
    if q.shape[-1] != v.shape[-1]:
        raise ValueError(f"embedding sizes differ: queries {q.shape}, items {v.shape}")
    if mode == "embd":
        q_vec, v_vec = _l2_normalize(q.mean(1)), _l2_normalize(v.mean(1))
    elif mode == "cosine":
        q_vec, v_vec = _l2_normalize(q).mean(1), _l2_normalize(v).mean(1)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return q_vec @ v_vec.T


def retrieve(queries, items, *, targets=None, relevance=None, mode: str = "embd", direction: str = "text->video",
             split: str = "test", captions_per_video: float = 1.0, ties: str = "pessimistic",
             similarity=None) -> RetrievalResult:
    """Rank `items` for each query and score one direction in one mode.

    Args:
        queries, items: embeddings, see `clip_similarity`. The window count of the protocol is the
            item windows for *->video and the query windows for video->*.
        targets / relevance: ground truth, see `vatt.eval.metrics.retrieval_ranks` (default: diagonal).
        similarity: a precomputed [Q, N] similarity, to avoid recomputing it (queries/items still
            give the shapes of the protocol).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    q_shape, v_shape = to_numpy(queries).shape, to_numpy(items).shape
    video_shape = q_shape if direction.startswith("video") else v_shape
    if similarity is None:
        similarity = clip_similarity(queries, items, mode)
    ranks = retrieval_ranks(similarity, targets=targets, relevance=relevance, ties=ties)
    protocol = RetrievalProtocol(
        split=split, direction=direction, mode=mode, num_queries=q_shape[0], num_items=v_shape[0],
        num_windows=video_shape[1] if len(video_shape) == 3 else 1,
        captions_per_video=float(captions_per_video), ties=ties, official=direction in OFFICIAL_DIRECTIONS)
    return RetrievalResult(protocol=protocol, metrics=recall_metrics_from_ranks(ranks), ranks=ranks)


def zero_shot_retrieval(*, video_text=None, text=None, caption_video=None, video_audio=None, audio=None,
                        directions=("text->video", "video->text", "audio->video"), modes=MODES,
                        split: str = "test", ties: str = "pessimistic") -> list[RetrievalResult]:
    """All requested directions in all requested modes, as a list of results (direction-major).

    Args:
        video_text: [N, W, D] video windows in the video-text space (`video.totxt`), or [N, D].
        text: [T, D] caption embeddings (`text.tovid`).
        caption_video: [T] int, the video index of each caption. Default: caption i belongs to video i
            (requires T == N), the official one-caption-per-video protocol.
        video_audio: [N, W, D] video windows in the video-audio space (`video.toaud`), or [N, D].
        audio: [N, D] or [N, Wa, D] audio embeddings (`audio.tovid`); audio i belongs to video i.
        directions: subset of DIRECTIONS; a direction whose inputs are missing is an error.
        modes: subset of MODES.
        split: dataset and split name recorded in the protocol.
    """
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown directions {sorted(unknown)}; choose from {DIRECTIONS}")
    video_text, text, video_audio, audio = (None if x is None else to_numpy(x)
                                            for x in (video_text, text, video_audio, audio))
    results = []
    if {"text->video", "video->text"} & set(directions):
        if video_text is None or text is None:
            raise ValueError("text directions need video_text and text embeddings")
        num_videos, num_texts = video_text.shape[0], text.shape[0]
        if caption_video is None:
            if num_texts != num_videos:
                raise ValueError(f"{num_texts} captions for {num_videos} videos: pass caption_video")
            caption_video = np.arange(num_texts)
        caption_video = to_numpy(caption_video).astype(np.int64)
        if caption_video.shape != (num_texts,):
            raise ValueError(f"caption_video must be [{num_texts}], got shape {caption_video.shape}")
        text_to_video = relevance_from_targets(caption_video, num_videos)  # [T, N]
        captions_per_video = num_texts / num_videos
        for mode in modes:
            sim = clip_similarity(text, video_text, mode)  # [T, N]; video->text is its transpose
            if "text->video" in directions:
                results.append(retrieve(text, video_text, relevance=text_to_video, mode=mode,
                                        direction="text->video", split=split,
                                        captions_per_video=captions_per_video, ties=ties, similarity=sim))
            if "video->text" in directions:
                results.append(retrieve(video_text, text, relevance=text_to_video.T, mode=mode,
                                        direction="video->text", split=split,
                                        captions_per_video=captions_per_video, ties=ties, similarity=sim.T))
    if "audio->video" in directions:
        if video_audio is None or audio is None:
            raise ValueError("audio->video needs video_audio and audio embeddings")
        if audio.shape[0] != video_audio.shape[0]:
            raise ValueError(f"{audio.shape[0]} audio clips for {video_audio.shape[0]} videos")
        for mode in modes:
            results.append(retrieve(audio, video_audio, mode=mode, direction="audio->video", split=split,
                                    ties=ties))
    # Direction-major order reads best in a table.
    order = {d: i for i, d in enumerate(DIRECTIONS)}
    return sorted(results, key=lambda r: order[r.protocol.direction])


def heldout_retrieval(emb: dict[str, np.ndarray]) -> dict[str, float]:
    """The held-out check of pre-training (and the demo's): text→video and audio→video R@1/R@5/R@10/MedR
    (R@k as fractions) over the clips that have text/audio, from `vatt.inference.embed_clips` arrays.

    One window per clip and the first caption of each clip (a learning signal, not the official 4-window
    protocol of `vatt eval retrieval`). Text queries search all videos; audio queries search the videos of
    clips that have audio.
    """
    metrics: dict[str, float] = {}
    with_text = np.flatnonzero(emb["text_mask"] > 0)
    with_audio = np.flatnonzero(emb["audio_mask"] > 0)
    results = []
    if len(with_text):
        results += zero_shot_retrieval(video_text=emb["video_vt"], text=emb["text_vt"][with_text],
                                       caption_video=with_text, directions=("text->video",), modes=("embd",),
                                       split="heldout")
    if len(with_audio):
        results += zero_shot_retrieval(video_audio=emb["video_va"][with_audio], audio=emb["audio_va"][with_audio],
                                       directions=("audio->video",), modes=("embd",), split="heldout")
    for r in results:
        for key in ("R@1", "R@5", "R@10", "MedR"):
            metrics[f"{r.protocol.direction}/{key}"] = float(r.metrics[key])
        metrics[f"{r.protocol.direction}/num_items"] = float(r.protocol.num_items)
    return metrics


def first_caption_per_clip(arrays: dict[str, Any]) -> dict[str, Any]:
    """The arrays with each clip's first caption only (captions not tied to a clip are dropped)."""
    if "text_clip" not in arrays:
        return arrays
    clip_of = np.asarray(arrays["text_clip"])
    keep = np.zeros(len(clip_of), bool)
    seen: set[int] = set()
    for i, c in enumerate(clip_of.tolist()):
        if c >= 0 and c not in seen:
            seen.add(c)
            keep[i] = True
    return {k: (v[keep] if k == "text" or k.startswith("text_") else v) for k, v in arrays.items()}


def retrieval_from_arrays(arrays: dict[str, Any], *, directions=OFFICIAL_DIRECTIONS,
                          modes=("embd", "cosine"), split: str = "test", ties: str = "pessimistic",
                          strict: bool = False) -> tuple[list, dict[str, Any]]:
    """Zero-shot retrieval from embedding arrays (the layout of `vatt.embedding_files.embedding_arrays` /
    an .npz).

    Videos without captions are left out of the text directions (each query and each video needs a
    ground truth); audio->video uses the clips that have a video and real audio. A direction the data
    cannot give is skipped and named in the returned notes, or raises with `strict=True`.
    Returns (results, notes) with notes {"skipped_directions": {...}, "num_text_videos", "num_audio_clips"}.
    """
    w = int(arrays["meta"].get("num_windows", 1))
    n = int(arrays["clip"].max()) + 1 if "clip" in arrays and len(arrays["clip"]) else 0

    def per_clip(key):
        return arrays[key].reshape(n, w, -1) if key in arrays else None

    has_video = arrays["has_video"].reshape(n, w)[:, 0] if n else np.zeros(0, bool)
    has_audio = arrays["has_audio"].reshape(n, w)[:, 0] & (arrays["audio_mask"].reshape(n, w).max(1) > 0) if n \
        else np.zeros(0, bool)
    results, skipped, notes = [], {}, {}

    text_dirs = tuple(d for d in directions if d in ("text->video", "video->text"))
    if text_dirs:
        why = None
        if "text_vt" not in arrays or per_clip("video_vt") is None:
            why = "needs video and caption embeddings in the video-text space"
        else:
            clip_of = arrays["text_clip"]
            usable = (clip_of >= 0) & has_video[np.clip(clip_of, 0, max(n - 1, 0))] if n else clip_of < -1
            videos = np.unique(clip_of[usable])
            if len(videos) < 2:
                why = "needs at least two clips with a video and a caption"
            else:
                remap = np.full(n, -1)
                remap[videos] = np.arange(len(videos))
                results += zero_shot_retrieval(
                    video_text=per_clip("video_vt")[videos], text=arrays["text_vt"][usable],
                    caption_video=remap[clip_of[usable]], directions=text_dirs, modes=modes, split=split, ties=ties)
                notes["num_text_videos"] = int(len(videos))
                notes["num_captions"] = int(usable.sum())
        if why:
            skipped.update({d: why for d in text_dirs})
    if "audio->video" in directions:
        clips = np.flatnonzero(has_video & has_audio)
        if per_clip("audio_va") is None or per_clip("video_va") is None or len(clips) < 2:
            skipped["audio->video"] = "needs at least two clips with both a video and real audio"
        else:
            results += zero_shot_retrieval(video_audio=per_clip("video_va")[clips], audio=per_clip("audio_va")[clips],
                                           directions=("audio->video",), modes=modes, split=split, ties=ties)
            notes["num_audio_clips"] = int(len(clips))
    if skipped and strict:
        raise ValueError("; ".join(f"{d}: {why}" for d, why in skipped.items()))
    notes["skipped_directions"] = skipped
    return results, notes


def format_table(results: list[RetrievalResult]) -> str:
    """A fixed-width text table of retrieval results, one row per (split, direction, mode).

    R@k are shown in percent. The footer states the conventions so the table can be pasted on its own.
    """
    header = ("split", "direction", "mode", "win", "cap/vid", "queries", "items",
              "R@1", "R@5", "R@10", "MedR", "MeanR")
    rows = []
    for r in results:
        p, m = r.protocol, r.metrics
        rows.append((p.split, p.direction + ("" if p.official else "*"), p.mode, str(p.num_windows),
                     f"{p.captions_per_video:g}" if p.direction != "audio->video" else "-",
                     str(p.num_queries), str(p.num_items),
                     f"{100 * m['R@1']:.1f}", f"{100 * m['R@5']:.1f}", f"{100 * m['R@10']:.1f}",
                     f"{m['MedR']:g}", f"{m['MeanR']:.1f}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    text_cols = 3  # left-align the names, right-align the numbers

    def line(cells):
        return "  ".join(c.ljust(w) if i < text_cols else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]
    ties = sorted({r.protocol.ties for r in results}) or ["pessimistic"]
    lines.append(f"R@k in %, ranks 1-based, {'/'.join(ties)} ties; embd = mean window embedding, "
                 f"cosine = mean window cosine; * = not reported by the official code")
    return "\n".join(lines)
