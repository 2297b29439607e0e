import matplotlib.image as mpimg
import numpy as np
import pytest

from vatt.eval import visualize as V


def _check_png(path, width, height):
    assert path.exists() and path.stat().st_size > 0
    image = mpimg.imread(path)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_feature_map_png(tmp_path, method):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    feats = rng.normal(size=(3, 10))[labels] * 5 + rng.normal(size=(60, 10))
    path = V.plot_features_2d(feats, labels, tmp_path / "sub" / f"{method}.png", method=method,
                              class_names=["archery", "bowling", "diving"], size_inches=(6, 4), dpi=50)
    _check_png(path, 300, 200)


def test_pca_projection_separates_blobs():
    labels = np.repeat([0, 1], 10)
    feats = np.zeros((20, 5))
    feats[:, 0] = labels * 10.0 + np.linspace(0, 1, 20)
    coords = V.project_2d(feats, "pca")
    assert coords.shape == (20, 2)
    assert np.all(np.abs(coords[labels == 0, 0].mean() - coords[labels == 1, 0].mean()) > 5)


def test_many_classes_and_string_labels(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array([f"class{i % 50}" for i in range(200)])
    path = V.plot_features_2d(None, labels, tmp_path / "many.png", coords=rng.normal(size=(200, 2)),
                              size_inches=(5, 5), dpi=40)
    _check_png(path, 200, 200)


def test_similarity_heatmap_png(tmp_path):
    rng = np.random.default_rng(2)
    sim = rng.normal(size=(30, 40))
    path = V.plot_similarity(sim, tmp_path / "sim.png", targets=np.arange(30), size_inches=(4, 3), dpi=100,
                             query_label="text", item_label="video")
    _check_png(path, 400, 300)


def test_bad_inputs():
    with pytest.raises(ValueError):
        V.project_2d(np.zeros((10, 3)), "umap")
    with pytest.raises(ValueError):
        V.plot_similarity(np.zeros(5), "x.png")


def test_class_names_that_name_a_colour_are_drawn_in_it():
    # The sample data's "green square" was drawn red and "blue square" orange (tab20 by class index).
    from matplotlib.colors import rgb_to_hsv

    from vatt.data.sample_data import CLASSES
    styles = V.class_styles(CLASSES)
    assert len(set(styles)) == len(CLASSES)  # every class looks different
    hue = {"red": (0.95, 0.05), "green": (0.25, 0.45), "blue": (0.55, 0.72), "yellow": (0.1, 0.2)}
    for name, (colour, marker) in zip(CLASSES, styles):
        h = rgb_to_hsv(np.array(colour[:3]))[0]
        lo, hi = hue[name.split()[0]]
        assert (lo <= h <= hi) if lo < hi else (h >= lo or h <= hi), (name, h)
        assert marker == {"circle": "o", "square": "s", "triangle": "^", "cross": "X"}[name.split()[1]]
    many = V.class_styles([f"class{i}" for i in range(50)])
    assert len(set(many)) == 50  # beyond 20 classes: colours x markers, still all distinct


def test_feature_map_pixels_have_the_colour_the_name_says(tmp_path):
    # Four clusters in four corners; the pixels drawn in each corner carry its class's colour.
    names = ["red a", "green b", "blue c", "yellow d"]
    corners = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    labels = np.repeat(np.arange(4), 30)
    coords = corners[labels] + np.random.default_rng(0).normal(scale=0.3, size=(120, 2))
    path = V.plot_features_2d(None, labels, tmp_path / "m.png", coords=coords, class_names=names,
                              size_inches=(6, 4), dpi=80)
    image = mpimg.imread(path)[..., :3]
    h, w = image.shape[:2]
    plot = image[:, : int(w * 0.82)]  # the legend sits to the right of the plot
    ys, xs = np.nonzero(plot.std(axis=-1) > 0.15)  # saturated (coloured) pixels
    channel = {"red a": 0, "green b": 1, "blue c": 2}
    left = xs < (xs.min() + xs.max()) / 2
    top = ys < (ys.min() + ys.max()) / 2  # image rows grow downwards: data y = 10 is at the top
    for name, sel in (("red a", left & ~top), ("green b", ~left & ~top), ("blue c", left & top)):
        mean = plot[ys[sel], xs[sel]].mean(axis=0)
        assert np.argmax(mean) == channel[name], (name, mean)
    yellow = plot[ys[~left & top], xs[~left & top]].mean(axis=0)
    assert yellow[0] > yellow[2] + 0.3 and yellow[1] > yellow[2] + 0.3


def test_similarity_map_is_labelled_and_small_by_default(tmp_path, monkeypatch):
    # `vatt visualize similarity` drew all 200 clips by default: an unreadable striped grid without labels.
    from vatt.cli import build_parser

    args = build_parser().parse_args(["visualize", "similarity", "m", "c.csv"])
    assert args.max_clips == 20
    figures = []
    save = V._save
    monkeypatch.setattr(V, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    sim = np.random.default_rng(3).normal(size=(5, 6))
    captions = [f"caption {i}: a red circle that moves slowly to the right across the screen" for i in range(5)]
    files = [f"clip_{i:05d}.mp4" for i in range(6)]
    path = V.plot_similarity(sim, tmp_path / "labelled.png", size_inches=(6, 5), dpi=60, query_names=captions,
                             item_names=files)
    _check_png(path, 360, 300)
    ax = figures[-1].axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert len(rows) == 5 and rows[0].startswith("caption 0: a red circle") and len(rows[0]) <= 40
    assert [t.get_text() for t in ax.get_xticklabels()] == files
    assert all(t.get_fontsize() >= 7 for t in ax.get_yticklabels())
    V.plot_similarity(np.zeros((50, 50)), tmp_path / "big.png", query_names=[str(i) for i in range(50)],
                      item_names=[str(i) for i in range(50)])
    assert [t.get_text() for t in figures[-1].axes[0].get_yticklabels()] != [str(i) for i in range(50)]
