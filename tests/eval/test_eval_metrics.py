import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hydra_umm.eval.metrics import psnr, ssim


@pytest.fixture(scope="module")
def pair():
    """Two batches in [-1, 1]: smooth structure, and a noisy, shifted, contrast-changed copy."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 10, generator=g), size=(29, 37), mode="bilinear") * 2 - 1
    y = (0.8 * x + 0.1 + 0.15 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def _np(t, i):
    return t[i].double().numpy()


@pytest.mark.parametrize("to_unit", [False, True], ids=["[-1,1]", "[0,1]"])
def test_psnr_matches_skimage(pair, to_unit):
    x, y = pair
    data_range = 1.0 if to_unit else 2.0
    if to_unit:
        x, y = (x + 1) / 2, (y + 1) / 2
    ours = psnr(x, y, data_range=data_range)
    for i in range(x.shape[0]):
        ref = peak_signal_noise_ratio(_np(x, i), _np(y, i), data_range=data_range)
        assert abs(ours[i].item() - ref) < 1e-3


@pytest.mark.parametrize("gaussian", [False, True], ids=["uniform7", "gaussian1.5"])
@pytest.mark.parametrize("to_unit", [False, True], ids=["[-1,1]", "[0,1]"])
def test_ssim_matches_skimage(pair, gaussian, to_unit):
    x, y = pair
    data_range = 1.0 if to_unit else 2.0
    if to_unit:
        x, y = (x + 1) / 2, (y + 1) / 2
    ours = ssim(x, y, data_range=data_range, gaussian=gaussian)
    extra = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False} if gaussian else {}
    for i in range(x.shape[0]):
        ref = structural_similarity(_np(x, i), _np(y, i), data_range=data_range, channel_axis=0, **extra)
        assert abs(ours[i].item() - ref) < 1e-9  # float64 both: a changed covariance estimate is ~1e-5 off
    assert ours.min() < 0.95  # the pair is far from identical, so the comparison is not trivial


def test_identical_images(pair):
    x, _ = pair
    assert torch.allclose(ssim(x, x), torch.ones(x.shape[0], dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()


def test_bad_input_is_named(pair):
    x, y = pair
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[:, :, :-1])
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(x[..., :5, :5], y[..., :5, :5])
