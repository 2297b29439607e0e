"""Pictures for evaluation: 2-D maps of features coloured by class, and similarity heat maps.

Figures are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), never through
pyplot, so this works headless, does not switch the process-wide backend and leaves no open figures.
PNGs are saved without `bbox_inches="tight"`, so their pixel size is exactly `size_inches * dpi`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vatt.eval.metrics import to_numpy

PROJECTIONS = ("tsne", "pca")


def project_2d(features, method: str = "tsne", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """[N, D] features -> [N, 2] coordinates by t-SNE or PCA (scikit-learn).

    t-SNE starts from the PCA layout (stable across runs with the same seed); its perplexity is capped
    at (N - 1) / 3 because sklearn requires perplexity < N and small sets need a smaller value.
    """
    x = to_numpy(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 points for a 2-D projection, got {x.shape[0]}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(perplexity, (x.shape[0] - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    raise ValueError(f"method must be one of {PROJECTIONS}, got {method!r}")


def _new_figure(size_inches: tuple[float, float], dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_inches, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    from vatt.atomic import atomic_write
    path = Path(path)
    with atomic_write(path, what="picture") as f:
        fig.savefig(f, format="png", dpi=fig.dpi)
    return path


def plot_features_2d(features, labels, path, *, method: str = "tsne", class_names: Sequence[str] | None = None,
                     title: str | None = None, size_inches: tuple[float, float] = (8.0, 8.0), dpi: int = 100,
                     seed: int = 0, max_legend: int = 40, coords=None) -> Path:
    """Scatter plot of features projected to 2-D, one colour per class, saved as PNG.

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

    from matplotlib import colormaps

    # Qualitative maps keep neighbouring classes distinct; beyond 20 classes sample a continuous one.
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
    colors = cmap(np.linspace(0, 1, len(classes))) if len(classes) > 20 else cmap(np.arange(len(classes)))

    fig = _new_figure(size_inches, dpi)
    ax = fig.add_subplot(1, 1, 1)
    marker_size = 20 if len(labels) < 2000 else 4
    for color, c in zip(colors, classes):
        sel = labels == c
        ax.scatter(coords[sel, 0], coords[sel, 1], s=marker_size, color=color, label=name(c), alpha=0.8,
                   edgecolors="none")
    ax.set_xticks([])
    ax.set_yticks([])  # t-SNE axes have no meaning; PCA's are uncalibrated too
    method_name = {"tsne": "t-SNE", "pca": "PCA"}.get(method, method)
    heading = title or f"{method_name} of {len(labels)} features, {len(classes)} classes"
    if len(classes) <= max_legend:
        ax.legend(loc="best", fontsize="small", markerscale=1.5, ncol=1 if len(classes) <= 20 else 2,
                  framealpha=0.8)
    else:
        heading += " (legend omitted)"
    ax.set_title(heading)
    fig.tight_layout()  # rearranges axes inside the fixed canvas; the PNG size is unchanged
    return _save(fig, path)


def plot_similarity(similarity, path, *, title: str | None = None, query_label: str = "queries",
                    item_label: str = "items", targets=None, size_inches: tuple[float, float] = (8.0, 7.0),
                    dpi: int = 100, cmap: str = "viridis") -> Path:
    """Heat map of a retrieval similarity matrix [Q, N] with a colour bar, saved as PNG.

    `targets` [Q] (the correct item of each query) draws small red dots on the ground truth, so a
    good model shows its bright cells under the dots. Returns the path written.
    """
    sim = to_numpy(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [num_queries, num_items], got shape {sim.shape}")
    fig = _new_figure(size_inches, dpi)
    ax = fig.add_subplot(1, 1, 1)
    # "nearest" without resampling artefacts for small matrices; large ones are downsampled by Agg.
    image = ax.imshow(sim, aspect="auto", interpolation="nearest", cmap=cmap)
    fig.colorbar(image, ax=ax, label="similarity")
    if targets is not None:
        targets = to_numpy(targets).reshape(-1)
        if targets.shape[0] != sim.shape[0]:
            raise ValueError(f"{targets.shape[0]} targets for {sim.shape[0]} queries")
        ax.scatter(targets, np.arange(sim.shape[0]), s=max(1.0, 400.0 / sim.shape[0]), c="red", marker=".",
                   linewidths=0)
    ax.set_xlabel(f"{item_label} ({sim.shape[1]})")
    ax.set_ylabel(f"{query_label} ({sim.shape[0]})")
    ax.set_title(title or "similarity")
    fig.tight_layout()
    return _save(fig, path)
