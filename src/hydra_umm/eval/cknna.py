"""CKNNA: centered kernel nearest-neighbour alignment (Huh et al. 2024, "The Platonic
Representation Hypothesis"; code minyoungg/platonic-rep ``metrics.py``), used in HYDRA's appendix F.2.

For features A (n, d_a) and B (n, d_b) of the same n samples, with inner-product kernels
K = A A^T and L = B B^T:

* N_K(i) = the k rows j != i with the largest K_ij (likewise N_L(i));
* the mutual-kNN mask M_ij = 1 if j is in N_K(i) and in N_L(i) (row-wise, not symmetrised);
* s(K, L) = HSIC_u(M * K, M * L), the unbiased HSIC of Song et al. 2012 (eq. 5);
* CKNNA = s(K, L) / sqrt(s(K, K) s(L, L)), where s(K, K) uses M = mask of N_K alone.

Choices where the reference leaves them to the caller: rows are L2-normalised first (platonic-rep
normalises features before calling the metric; ``normalize=False`` turns it off), and the ratio has
no "+ 1e-6" in its denominator (so identical features give exactly 1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two (n, n) kernel matrices, n >= 4."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    value = (k * l.T).sum() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * (k @ l).sum() / (n - 2)
    return value / (n * (n - 3))


def knn_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """(n, n) 0/1 mask of each row's k largest off-diagonal kernel entries."""
    n = kernel.shape[0]
    off_diagonal = kernel.clone().fill_diagonal_(float("-inf"))
    neighbours = off_diagonal.topk(k, dim=1).indices  # (n, k)
    return torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device).scatter_(1, neighbours, 1)


def cknna(
    feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray, k: int = 10, normalize: bool = True
) -> float:
    """CKNNA between two feature matrices (n, d_a) and (n, d_b) of the same n samples, with k neighbours."""
    a, b = (torch.as_tensor(f).detach().double() for f in (feats_a, feats_b))
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need two (n, d) matrices with the same n, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"CKNNA's unbiased HSIC needs at least 4 samples, got {n}")
    if not 2 <= k <= n - 1:
        raise ValueError(f"k must be in [2, n - 1] = [2, {n - 1}], got {k}")
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    kern_a, kern_b = a @ a.T, b @ b.T
    mask_a, mask_b = knn_mask(kern_a, k), knn_mask(kern_b, k)
    mutual = mask_a * mask_b
    s_ab = hsic_unbiased(mutual * kern_a, mutual * kern_b)
    s_aa = hsic_unbiased(mask_a * kern_a, mask_a * kern_a)
    s_bb = hsic_unbiased(mask_b * kern_b, mask_b * kern_b)
    return float(s_ab / torch.sqrt(s_aa * s_bb).clamp_min(torch.finfo(torch.float64).tiny))


def pool_tokens(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One vector per image: (n, d) as is, token features (n, tokens, d) averaged over tokens."""
    f = torch.as_tensor(features).detach()
    if f.dim() == 3:
        return f.mean(dim=1)
    if f.dim() != 2:
        raise ValueError(f"features must be (n, d) or (n, tokens, d), got shape {tuple(f.shape)}")
    return f


def cknna_pairs(
    features: dict[str, torch.Tensor | np.ndarray], pairs: list[tuple[str, str]], k: int = 10
) -> dict[str, float]:
    """CKNNA for named pairs of feature sets of the same images, e.g. HydraTok layer l vs the teacher's
    layer l, or HYDRA's generation vs understanding features; keys ``"<a> vs <b>"``."""
    missing = sorted({name for pair in pairs for name in pair} - set(features))
    if missing:
        raise KeyError(f"no features named {missing}; have {sorted(features)}")
    return {f"{a} vs {b}": cknna(pool_tokens(features[a]), pool_tokens(features[b]), k) for a, b in pairs}
