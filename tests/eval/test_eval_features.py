import numpy as np
import pytest
from PIL import Image

from hydra_umm.eval.features import embed_2d, plot_feature_maps


@pytest.fixture(scope="module")
def clusters():
    """Three well-separated classes in 12-d."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(3, 12))
    labels = np.repeat(["circle", "square", "triangle"], 15)
    feats = centres[np.repeat(np.arange(3), 15)] + rng.normal(size=(45, 12))
    return feats, labels


def test_pca_of_planar_points_preserves_distances():
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(30, 2)) * [3.0, 1.0]
    basis, _ = np.linalg.qr(rng.normal(size=(10, 2)))
    xy = embed_2d(plane @ basis.T + 5.0, method="pca")
    dist = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(xy), dist(plane), atol=1e-8)


def _class_purity(xy, labels, k=5):
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return (labels[nn] == labels[:, None]).mean()


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_keeps_classes_apart(clusters, method):
    feats, labels = clusters
    xy = embed_2d(feats, method=method)
    assert xy.shape == (45, 2)
    assert _class_purity(xy, labels) > 0.95


def test_plot_writes_one_panel_per_feature_set(clusters, tmp_path):
    feats, labels = clusters
    path = plot_feature_maps({"generation": feats, "understanding": feats[:, ::-1] * 2}, labels,
                             tmp_path / "maps" / "tsne.png", method="pca")
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side
    with pytest.raises(ValueError, match="labels"):
        plot_feature_maps({"generation": feats}, labels[:-1], tmp_path / "x.png", method="pca")
    with pytest.raises(ValueError, match="method"):
        embed_2d(feats, method="umap")
