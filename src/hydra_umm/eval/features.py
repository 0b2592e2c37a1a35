"""2-D maps of two feature sets coloured by class (HYDRA appendix C.4: generation-branch vs
understanding-branch features on the same images), with t-SNE or PCA, saved as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hydra_umm.eval.cknna import pool_tokens  # noqa: E402

METHODS = ("tsne", "pca")


def _matrix(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, d) float64; token features (n, tokens, d) are mean-pooled over tokens (:func:`pool_tokens`)."""
    return pool_tokens(features).cpu().double().numpy()


def embed_2d(features: torch.Tensor | np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(n, 2) embedding of (n, d) features by t-SNE (perplexity min(30, (n - 1) / 3)) or PCA."""
    from sklearn.decomposition import PCA  # imported on use: sklearn takes seconds to import
    from sklearn.manifold import TSNE

    f = _matrix(features)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(f)
    if method == "tsne":
        perplexity = min(30.0, (f.shape[0] - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(f)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def plot_feature_maps(
    feature_sets: dict[str, torch.Tensor | np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    method: str = "tsne",
    seed: int = 0,
) -> Path:
    """One panel per named feature set (e.g. {"generation": ..., "understanding": ...}), points
    coloured by class label, written to ``path`` (PNG)."""
    labels = [str(label) for label in labels]
    classes = sorted(set(labels))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(feature_sets), figsize=(4.5 * len(feature_sets), 4.2), squeeze=False)
    for ax, (name, feats) in zip(axes[0], feature_sets.items()):
        if _matrix(feats).shape[0] != len(labels):
            raise ValueError(f"{name}: {_matrix(feats).shape[0]} feature rows but {len(labels)} labels")
        xy = embed_2d(feats, method, seed)
        for i, cls in enumerate(classes):
            rows = [j for j, label in enumerate(labels) if label == cls]
            ax.scatter(xy[rows, 0], xy[rows, 1], s=12, color=colours(i % colours.N), label=cls)
        ax.set_title(f"{name} ({method})")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
