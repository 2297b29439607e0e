"""Pictures for evaluation: 2-D maps of features coloured by class, and similarity heat maps.

Figures are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), never through
pyplot, so this works headless, does not switch the process-wide backend and leaves no open figures.
PNGs are saved without `bbox_inches="tight"`, so their pixel size is exactly `size_inches * dpi`.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from vatt.atomic import atomic_write
from vatt.data.manifest import MediaEntry, list_media
from vatt.eval.metrics import to_numpy
from vatt.eval.retrieval import clip_similarity

PROJECTIONS = ("tsne", "pca")


def project_2d(features, method: str = "tsne", seed: int = 0, perplexity: float = 30.0,
               tsne_method: str = "barnes_hut") -> np.ndarray:
    """[N, D] features -> [N, 2] coordinates by t-SNE or PCA (scikit-learn).

    t-SNE starts from the PCA layout (stable across runs with the same seed); its perplexity is capped
    at (N - 1) / 3 because sklearn requires perplexity < N and small sets need a smaller value.
    `tsne_method="exact"` computes all pairs: for a few hundred points it takes about a second, where
    scikit-learn's default Barnes-Hut took 5-40 s on a busy 2-core machine (its OpenMP threads stall).
    """
    x = to_numpy(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 points for a 2-D projection, got {x.shape[0]}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        perplexity = min(perplexity, (x.shape[0] - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", method=tsne_method,
                    random_state=seed).fit_transform(x)
    raise ValueError(f"method must be one of {PROJECTIONS}, got {method!r}")


def _new_figure(size_inches: tuple[float, float], dpi: int, layout: str | None = None):
    # matplotlib is imported when a picture is drawn: it is slow to import and most users never draw.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_inches, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_write(path, what="picture") as f:
        fig.savefig(f, format="png", dpi=fig.dpi)
    return path


# Class names that name a colour are drawn in that colour (a "green square" in green): a legend whose
# colours contradict the names is misread. Shades picked to stay legible on white (yellow darkened).
NAMED_COLOURS = {
    "red": "#d62728", "green": "#2ca02c", "blue": "#1f5fd6", "yellow": "#d4b000", "orange": "#ff7f0e",
    "purple": "#7b3fb5", "violet": "#7b3fb5", "pink": "#e377c2", "brown": "#8c564b", "black": "#222222",
    "grey": "#7f7f7f", "gray": "#7f7f7f", "cyan": "#17becf", "magenta": "#c2189b", "white": "#dddddd",
}
# Class names that name a shape get that marker.
NAMED_MARKERS = {"circle": "o", "square": "s", "triangle": "^", "cross": "X", "diamond": "D", "star": "*",
                 "plus": "P", "pentagon": "p", "hexagon": "h"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "p", "h")


def class_styles(names: Sequence[str]) -> list[tuple[tuple[float, float, float, float], str]]:
    """A (RGBA colour, marker) per class, all distinct: the named colour and shape where a name has them;
    otherwise a qualitative palette (tab10 up to 10 classes, tab20 up to 20) and, beyond 20 classes,
    palette colours combined with markers (never a continuous map, whose neighbours look alike)."""
    from matplotlib import colormaps  # as in `_new_figure`: imported when a picture is drawn
    from matplotlib.colors import to_rgba

    words = [str(n).lower().replace("-", " ").replace("_", " ").split() for n in names]
    colour_word = [next((w for w in ws if w in NAMED_COLOURS), None) for ws in words]
    marker_word = [next((w for w in ws if w in NAMED_MARKERS), None) for ws in words]
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    size = 10 if len(names) <= 10 else 20
    free = [c for c in (palette(i) for i in range(size))
            if not any(c == to_rgba(NAMED_COLOURS[w]) for w in colour_word if w)]
    styles, used = [], set()
    next_free = 0
    for i, name in enumerate(names):
        if colour_word[i]:
            colour = to_rgba(NAMED_COLOURS[colour_word[i]])
        else:
            colour = free[next_free % len(free)]
            next_free += 1
        preferred = [NAMED_MARKERS[marker_word[i]]] if marker_word[i] else []
        marker = next((m for m in preferred + list(MARKERS) if (colour, m) not in used), None)
        while marker is None:  # more classes of one colour than markers: a darker shade
            colour = tuple(0.7 * c for c in colour[:3]) + (1.0,)
            marker = next((m for m in MARKERS if (colour, m) not in used), None)
        used.add((colour, marker))
        styles.append((colour, marker))
    return styles


def plot_features_2d(features, labels, path, *, method: str = "tsne", class_names: Sequence[str] | None = None,
                     title: str | None = None, size_inches: tuple[float, float] = (8.0, 8.0), dpi: int = 100,
                     seed: int = 0, max_legend: int = 40, coords=None) -> Path:
    """Scatter plot of features projected to 2-D, one colour and marker per class (`class_styles`), saved
    as PNG, with a legend beside the plot.

    Args:
        features: [N, D] (e.g. `features_pooled`), ignored when `coords` [N, 2] is given.
        labels: [N] int class indices (named by `class_names`) or strings.
        method: "tsne" or "pca".
        max_legend: the legend lists the classes when there are at most this many; above that it
            would cover the plot, so it is left out and the title says so.
    Returns the path written; the PNG is `size_inches * dpi` pixels.
    """
    labels = np.asarray(to_numpy(labels))
    if coords is None:
        coords = project_2d(features, method=method, seed=seed)
    coords = to_numpy(coords, dtype=np.float64)
    if coords.shape != (labels.shape[0], 2):
        raise ValueError(f"coords must be [{labels.shape[0]}, 2], got shape {coords.shape}")
    classes = np.unique(labels)

    def name(c):
        if class_names is not None and np.issubdtype(labels.dtype, np.integer):
            return str(class_names[int(c)])
        return str(c)

    names = [name(c) for c in classes]
    styles = class_styles(names)
    fig = _new_figure(size_inches, dpi, layout="constrained")  # keeps the legend beside the plot inside the PNG
    ax = fig.add_subplot(1, 1, 1)
    marker_size = 36 if len(labels) < 2000 else 8
    for (color, marker), c, label in zip(styles, classes, names):
        sel = labels == c
        ax.scatter(coords[sel, 0], coords[sel, 1], s=marker_size, color=color, marker=marker, label=label,
                   alpha=0.85, edgecolors="black", linewidths=0.3)
    ax.set_xticks([])
    ax.set_yticks([])  # t-SNE axes have no meaning; PCA's are uncalibrated too
    method_name = {"tsne": "t-SNE", "pca": "PCA"}.get(method, method)
    heading = title or f"{method_name} of {len(labels)} features, {len(classes)} classes"
    if len(classes) <= max_legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", markerscale=1.2,
                  ncol=1 if len(classes) <= 20 else 2, frameon=False)
    else:
        heading += " (legend omitted)"
    ax.set_title(heading, fontsize="medium")
    return _save(fig, path)


def plot_similarity(similarity, path, *, title: str | None = None, query_label: str = "queries",
                    item_label: str = "items", targets=None, size_inches: tuple[float, float] = (8.0, 7.0),
                    dpi: int = 100, cmap: str = "viridis", query_names: Sequence[str] | None = None,
                    item_names: Sequence[str] | None = None, max_tick_labels: int = 40) -> Path:
    """Heat map of a retrieval similarity matrix [Q, N] with a colour bar, saved as PNG.

    `targets` [Q] (the correct item of each query) draws small red dots on the ground truth, so a
    good model shows its bright cells under the dots. `query_names` / `item_names` label the rows and
    columns (captions, file names; long ones shortened) when there are at most `max_tick_labels` of them;
    the figure grows with the labels so they stay legible. Returns the path written.
    """
    sim = to_numpy(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [num_queries, num_items], got shape {sim.shape}")
    label_rows = query_names is not None and len(query_names) == sim.shape[0] and sim.shape[0] <= max_tick_labels
    label_cols = item_names is not None and len(item_names) == sim.shape[1] and sim.shape[1] <= max_tick_labels
    fig = _new_figure(size_inches, dpi, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    # "nearest" without resampling artefacts for small matrices; large ones are downsampled by Agg.
    image = ax.imshow(sim, aspect="auto", interpolation="nearest", cmap=cmap)
    fig.colorbar(image, ax=ax, label="similarity")
    if targets is not None:
        targets = to_numpy(targets).reshape(-1)
        if targets.shape[0] != sim.shape[0]:
            raise ValueError(f"{targets.shape[0]} targets for {sim.shape[0]} queries")
        ax.scatter(targets, np.arange(sim.shape[0]), s=max(4.0, 400.0 / sim.shape[0]), c="red", marker=".",
                   linewidths=0)

    def short(text: str, n: int = 40) -> str:
        text = str(text)
        return text if len(text) <= n else text[: n - 1] + "…"

    if label_rows:
        ax.set_yticks(np.arange(sim.shape[0]), [short(q) for q in query_names], fontsize=8)
    if label_cols:
        ax.set_xticks(np.arange(sim.shape[1]), [short(i, 24) for i in item_names], fontsize=8, rotation=60,
                      ha="right", rotation_mode="anchor")
    ax.set_xlabel(f"{item_label} ({sim.shape[1]})")
    ax.set_ylabel(f"{query_label} ({sim.shape[0]})")
    ax.set_title(title or "similarity")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# What `vatt visualize` draws, from embedding arrays (the `vatt.embedding_files` layout)
# --------------------------------------------------------------------------------------------------

def class_folder_entries(root: str | os.PathLike, left_out: Counter | None = None) -> list[MediaEntry]:
    """The media files of a folder with one sub-folder per class, labelled (`fields["label"]`) by it;
    files directly in `root` have no class and are left out."""
    root = Path(root)
    entries = [MediaEntry(e.path, fields={"label": Path(e.path).relative_to(root).parts[0]})
               for e in list_media([root], left_out=left_out) if len(Path(e.path).relative_to(root).parts) > 1]
    if not entries:
        raise ValueError(f"{root}: no media files in class sub-folders")
    return entries


@dataclass
class FeaturePoints:
    """One point per clip (its windows averaged) of one modality's features or embeddings, with its label."""

    x: np.ndarray  # [N, D]
    labels: list[str]
    modality: str
    space: str
    dropped: int  # clips without that modality


def feature_points(arrays: dict[str, Any], labels: Sequence[str], *, modality: str = "auto",
                   space: str = "features") -> FeaturePoints:
    """`labels` (one per clip) and the clips' `<modality>_<space>` arrays, windows averaged; clips without
    the modality are dropped. modality "auto": video if any clip has it, else audio."""
    w = int(arrays["meta"].get("num_windows", 1))
    if modality == "auto":
        modality = "video" if "video_features" in arrays and arrays["has_video"].any() else "audio"
    key = f"{modality}_{space}"
    if key not in arrays:
        raise ValueError(f"no {space} of {modality} in the embeddings (they hold "
                         f"{', '.join(k for k in arrays if k.endswith(('features', '_va', '_vt')))})")
    x = arrays[key].reshape(len(labels), w, -1).mean(axis=1)
    keep = np.isfinite(x).all(axis=1)
    kept = [lab for lab, k in zip(labels, keep) if k]
    if len(kept) < 3:
        raise ValueError(f"only {len(kept)} clip(s) have {modality} embeddings; need at least 3")
    return FeaturePoints(x[keep], kept, modality, space, int((~keep).sum()))


def plot_feature_maps(points: FeaturePoints, out_dir: str | os.PathLike, methods: Sequence[str] = PROJECTIONS,
                      seed: int = 0) -> list[Path]:
    """`plot_features_2d` of the points by each method, as `<out_dir>/<modality>_<space>_<method>.png`."""
    labels = np.array(points.labels, dtype=str)
    written = []
    for method in methods:
        title = (f"{ {'tsne': 't-SNE', 'pca': 'PCA'}[method]} of {points.modality} {points.space} "
                 f"({len(labels)} clips, {len(set(points.labels))} classes)")
        written.append(plot_features_2d(points.x, labels, Path(out_dir) / f"{points.modality}_{points.space}_{method}.png",
                                        method=method, title=title, seed=seed))
    return written


@dataclass
class SimilarityMap:
    """A retrieval similarity matrix `[Q, N]` and what its rows and columns are."""

    similarity: np.ndarray
    targets: np.ndarray  # [Q] the column of each row's clip
    query_names: list[str]
    item_names: list[str]
    query_label: str
    item_label: str
    num_windows: int

    @property
    def recall_at_1(self) -> float:
        """Fraction of rows whose target scores highest (ties pessimistic)."""
        sim, q = self.similarity, np.arange(len(self.targets))
        return float(np.mean((sim > sim[q, self.targets][:, None]).sum(1) == 0))


def similarity_map(arrays: dict[str, Any], pair: str = "text-video", mode: str = "embd",
                   max_clips: int = 0) -> SimilarityMap:
    """The similarities of the first `max_clips` clips (0: all): "text-video", each clip's first caption
    against the clips' video windows (ground truth the diagonal, nearly), or "audio-video", the audio of the
    clips that have both against their video."""
    w = int(arrays["meta"].get("num_windows", 1))
    n = int(arrays["clip"].max()) + 1
    if max_clips:
        n = min(n, max_clips)
    names = [Path(str(arrays["path"][c * w])).name for c in range(n)]
    if pair == "text-video":
        if "text_vt" not in arrays or "video_vt" not in arrays:
            raise ValueError("text-video needs caption and video embeddings in the video-text space")
        videos = arrays["video_vt"][: n * w].reshape(n, w, -1)
        keep = (arrays["text_clip"] >= 0) & (arrays["text_clip"] < n)
        first: dict[int, int] = {}  # clip -> its first caption's row, in clip order
        for i in np.flatnonzero(keep):
            first.setdefault(int(arrays["text_clip"][i]), i)
        rows = [first[c] for c in sorted(first)]
        return SimilarityMap(clip_similarity(arrays["text_vt"][rows], videos, mode), np.array(sorted(first)),
                             [str(arrays["text"][r]) for r in rows], names, "captions", "clips (video)", w)
    if "audio_va" not in arrays:
        raise ValueError("audio-video needs audio embeddings")
    has = arrays["has_audio"][: n * w].reshape(n, w)[:, 0] & arrays["has_video"][: n * w].reshape(n, w)[:, 0]
    clips = np.flatnonzero(has)
    if len(clips) < 2:
        raise ValueError("audio-video needs at least two clips with video and audio")
    videos = arrays["video_va"][: n * w].reshape(n, w, -1)[clips]
    queries = arrays["audio_va"][: n * w].reshape(n, w, -1)[clips]
    clip_names = [names[c] for c in clips]
    return SimilarityMap(clip_similarity(queries, videos, mode), np.arange(len(clips)), clip_names, clip_names,
                         "audio", "clips (video)", w)


def plot_similarity_map(smap: SimilarityMap, path: str | os.PathLike, title: str | None = None) -> Path:
    return plot_similarity(smap.similarity, path, title=title, query_label=smap.query_label,
                           item_label=smap.item_label, targets=smap.targets, query_names=smap.query_names,
                           item_names=smap.item_names)
