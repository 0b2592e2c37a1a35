import math

import numpy as np
import pytest
import torch

from hydra_umm.eval.cknna import cknna, cknna_pairs


def slow_cknna(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """CKNNA written from the definition with explicit loops (Huh et al. 2024; platonic-rep)."""
    n = len(a)
    a = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in a.tolist()]
    b = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in b.tolist()]
    kern_a = [[sum(x * y for x, y in zip(a[i], a[j])) for j in range(n)] for i in range(n)]
    kern_b = [[sum(x * y for x, y in zip(b[i], b[j])) for j in range(n)] for i in range(n)]

    def neighbours(kern, i):  # the k most similar other samples of row i
        return set(sorted((j for j in range(n) if j != i), key=lambda j: -kern[i][j])[:k])

    nn_a = [neighbours(kern_a, i) for i in range(n)]
    nn_b = [neighbours(kern_b, i) for i in range(n)]

    def hsic(k_mat, l_mat):  # Song et al. 2012, eq. 5, diagonals zeroed
        kt = [[0.0 if i == j else k_mat[i][j] for j in range(n)] for i in range(n)]
        lt = [[0.0 if i == j else l_mat[i][j] for j in range(n)] for i in range(n)]
        trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
        sum_k, sum_l = sum(map(sum, kt)), sum(map(sum, lt))
        ones_kl_ones = sum(kt[i][m] * lt[m][j] for i in range(n) for m in range(n) for j in range(n))
        return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * ones_kl_ones / (n - 2)) / (n * (n - 3))

    def masked(kern, mask_sets):
        return [[kern[i][j] if j in mask_sets[i] else 0.0 for j in range(n)] for i in range(n)]

    mutual = [nn_a[i] & nn_b[i] for i in range(n)]
    s_ab = hsic(masked(kern_a, mutual), masked(kern_b, mutual))
    s_aa = hsic(masked(kern_a, nn_a), masked(kern_a, nn_a))
    s_bb = hsic(masked(kern_b, nn_b), masked(kern_b, nn_b))
    return s_ab / math.sqrt(s_aa * s_bb)


@pytest.mark.parametrize("k", [3, 7])
def test_matches_slow_reference(k):
    rng = np.random.default_rng(k)
    a = rng.normal(size=(14, 6))
    b = a @ rng.normal(size=(6, 5)) + 0.5 * rng.normal(size=(14, 5))  # related, not identical
    ours = cknna(torch.tensor(a), torch.tensor(b), k)
    assert ours == pytest.approx(slow_cknna(a, b, k), rel=1e-9, abs=1e-12)
    assert 0.05 < abs(ours) < 0.999  # a non-trivial case


def test_identical_features_give_one():
    feats = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    assert cknna(feats, feats, 5) == pytest.approx(1.0, abs=1e-12)
    assert cknna(feats, 3.0 * feats, 5) == pytest.approx(1.0, abs=1e-9)  # scale-free after normalisation


def test_unrelated_random_features_give_near_zero():
    g = torch.Generator().manual_seed(1)
    values = [cknna(torch.randn(200, 32, generator=g), torch.randn(200, 48, generator=g), 10) for _ in range(3)]
    assert all(abs(v) < 0.12 for v in values), values
    related = torch.randn(200, 32, generator=g)
    assert cknna(related, related + 0.3 * torch.randn(200, 32, generator=g), 10) > 0.5


def test_pairs_pool_tokens_and_name_missing_sets():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(20, 9, 8, generator=g)
    result = cknna_pairs({"gen": tokens, "und": tokens.mean(1)}, [("gen", "und")], k=4)
    assert result == {"gen vs und": pytest.approx(1.0, abs=1e-12)}
    with pytest.raises(KeyError, match="teacher"):
        cknna_pairs({"gen": tokens}, [("gen", "teacher")])


def test_bad_input_is_named():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="same n"):
        cknna(x, x[:9], 3)
    with pytest.raises(ValueError, match="k must be"):
        cknna(x, x, 10)
