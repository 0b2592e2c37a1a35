import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

from hydra_umm.eval.frechet import (
    INCEPTION_FILE,
    fid_from_features,
    frechet_distance,
    gaussian_statistics,
    inception_features,
    load_inception,
)


def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy.linalg.sqrtm, as pytorch-fid computes it."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("rank", [8, 3], ids=["full-rank", "low-rank"])
def test_frechet_distance_matches_scipy_sqrtm(rank):
    rng = np.random.default_rng(rank)
    a, b = rng.normal(size=(8, rank)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T, b @ b.T / 3 + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7 * np.trace(s1))


@pytest.mark.parametrize("n", [300, 6], ids=["n>d", "n<d"])
def test_feature_fid_matches_scipy_on_statistics(n):
    rng = np.random.default_rng(n)
    fa, fb = rng.normal(size=(n, 12)) @ rng.normal(size=(12, 12)), rng.normal(loc=1.0, size=(n + 1, 12))
    mu, sigma = gaussian_statistics(fa)
    np.testing.assert_allclose(mu, fa.mean(0))
    np.testing.assert_allclose(sigma, np.cov(fa, rowvar=False))
    reference = scipy_frechet(*gaussian_statistics(fa), *gaussian_statistics(fb))
    assert fid_from_features(fa, fb) == pytest.approx(reference, rel=1e-6)
    assert fid_from_features(fa, fa) == pytest.approx(0.0, abs=1e-9 * np.trace(sigma))


@pytest.mark.parametrize("given", [None, "missing/dir/pt_inception.pth"])
def test_missing_inception_weights_error_is_clear(given, tmp_path):
    path = None if given is None else tmp_path / given
    with pytest.raises(FileNotFoundError) as err:
        load_inception(path)
    message = str(err.value)
    assert INCEPTION_FILE in message and "pytorch-fid" in message and "Nothing is downloaded" in message
    if path is not None:
        assert str(path) in message


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    """torch-fidelity's Inception-v3 with random weights, saved as a local weights file."""
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    with torch.no_grad():  # keep activations O(1) through 90 random layers (no slow denormals)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(6**0.5)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception(random_inception_file):
    def no_network(*args, **kwargs):
        raise AssertionError("the Inception weights must come from the local file, not a download")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "load_state_dict_from_url", no_network)
        mp.setattr(torch.hub, "load_state_dict_from_url", no_network)
        return load_inception(random_inception_file)


def test_inception_loads_the_local_file(inception, random_inception_file):
    saved = torch.load(random_inception_file)
    loaded = inception.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_inception_features_and_rfid_of_identical_sets(inception):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    both = inception_features(inception, torch.cat([images, -images]), batch_size=3)
    feats, other = both[:2], both[2:]
    assert both.shape == (4, 2048) and np.isfinite(both).all()
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9 * max(1.0, (feats.std(0) ** 2).sum()))
    assert fid_from_features(feats, other) > 0
