"""Frechet distance between Gaussians, and FID / rFID on Inception-v3 features.

FID(a, b) = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the
2048-d pool features of the standard Inception-v3 (the TensorFlow 2015-12-05 graph as ported by
torch-fidelity). rFID is FID between the features of original images and of their reconstructions.

The network weights come from a local file the user gives: pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
(the same converted TensorFlow weights: same module names, same hash prefix). Nothing is downloaded: with
a path, ``FeatureExtractorInceptionV3`` only calls ``torch.load`` on it (torch-fidelity 0.4.0); its
download branch runs only when the path is ``None``, which ``load_inception`` never passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hydra_umm.data.transforms import to_uint8

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
FEATURE = "2048"


def gaussian_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and sample covariance (d, d) of features (n, d), as in pytorch-fid."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need a feature matrix (n >= 2, d), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which equal those of
    the symmetric PSD matrix S1^(1/2) S2 S1^(1/2); computed with ``eigh`` (no complex sqrtm).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    lam, vec = np.linalg.eigh(sigma1)
    root1 = (vec * np.sqrt(np.clip(lam, 0, None))) @ vec.T  # S1^(1/2)
    middle = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def load_inception(weights_path: str | Path | None) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 feature extractor (2048-d pool features) from a local file."""
    how = (
        f"FID needs the Inception-v3 weights file {INCEPTION_FILE} (the TensorFlow 2015-12-05 Inception "
        f"used by pytorch-fid, torch-fidelity and clean-fid), downloaded once by you on a machine with "
        f"network access from {INCEPTION_URLS[0]} (or its identical copy {INCEPTION_URLS[1]}); "
        f"pass its local path. Nothing is downloaded here."
    )
    if weights_path is None:
        raise FileNotFoundError(f"no Inception weights given. {how}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path}. {how}")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE], feature_extractor_weights_path=str(path))


@torch.no_grad()
def inception_features(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Pool features (n, 2048) of images (n, 3, H, W) in [-1, 1]; the network resizes to 299 itself."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (n, 3, H, W), got shape {tuple(images.shape)}")
    device = next(net.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        (feats,) = net(to_uint8(chunk).to(device))  # the network's input: 8-bit images
        out.append(feats.double().cpu())
    return torch.cat(out).numpy()


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (n_a, d) and (n_b, d).

    With fewer samples than dimensions (a small evaluation set against 2048-d features) the d x d
    route is slow and ill-conditioned; then, with centred features A, B and S_a = A^T A / (n_a - 1),
    S_b = B^T B / (n_b - 1), the non-zero eigenvalues of S_a S_b are the squared singular values of
    A B^T / sqrt((n_a - 1)(n_b - 1)), so tr((S_a S_b)^(1/2)) is that matrix's nuclear norm: exact.
    """
    a, b = (np.asarray(f, dtype=np.float64) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature matrices (n >= 2, d) with the same d, got {a.shape} and {b.shape}")
    if max(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = (a - mu_a) / np.sqrt(len(a) - 1), (b - mu_b) / np.sqrt(len(b) - 1)
    tr_covmean = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * tr_covmean)


def rfid(net: torch.nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor, batch_size: int = 32) -> float:
    """Reconstruction FID between originals and reconstructions (each (n, 3, H, W) in [-1, 1])."""
    return fid_from_features(
        inception_features(net, originals, batch_size), inception_features(net, reconstructions, batch_size)
    )
