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
