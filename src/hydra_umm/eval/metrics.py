"""Reconstruction metrics: PSNR and SSIM on batches of images.

Both agree with ``skimage.metrics`` on the same images (per image, ``channel_axis`` over RGB):

* ``psnr`` = ``peak_signal_noise_ratio(x, y, data_range=R)``: 10 log10(R^2 / MSE), MSE over all pixels
  and channels of one image.
* ``ssim`` = ``structural_similarity(x, y, data_range=R, channel_axis=0)`` with skimage's defaults
  (7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03), or with ``gaussian=True`` the
  settings of Wang et al. 2004 (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``,
  an 11x11 window). The SSIM map is averaged over the valid region (skimage crops (win - 1) / 2
  pixels at each border) and over channels.

Images are float tensors (B, 3, H, W); ``data_range`` is 2 for the project's [-1, 1] convention
(the default) and 1 for [0, 1] images. Computation is in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

K1, K2 = 0.01, 0.03
UNIFORM_WINDOW = 7
GAUSSIAN_SIGMA, GAUSSIAN_TRUNCATE = 1.5, 3.5  # scipy.ndimage.gaussian_filter as skimage calls it


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (B, C, H, W) x2 -> (B,). Identical images give inf."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _window(gaussian: bool) -> torch.Tensor:
    """The separable 1-D window skimage's filter applies: (W,) weights summing to one."""
    if not gaussian:
        return torch.full((UNIFORM_WINDOW,), 1.0 / UNIFORM_WINDOW, dtype=torch.float64)
    radius = int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5)
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (r / GAUSSIAN_SIGMA) ** 2)
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, gaussian: bool = False) -> torch.Tensor:
    """Structural similarity per image: (B, C, H, W) x2 -> (B,), mean over channels and valid pixels."""
    _check_pair(x, y)
    w = _window(gaussian).to(x.device)
    size = w.numel()
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {tuple(x.shape[-2:])}")
    b, c = x.shape[:2]
    x, y = x.double().reshape(b * c, 1, *x.shape[-2:]), y.double().reshape(b * c, 1, *y.shape[-2:])

    def local_mean(z: torch.Tensor) -> torch.Tensor:  # valid-region filtering, separable
        z = F.conv2d(z, w.view(1, 1, 1, -1))
        return F.conv2d(z, w.view(1, 1, -1, 1))

    mu_x, mu_y = local_mean(x), local_mean(y)
    cov_norm = 1.0 if gaussian else size**2 / (size**2 - 1)  # skimage: sample covariance unless gaussian
    var_x = cov_norm * (local_mean(x * x) - mu_x**2)
    var_y = cov_norm * (local_mean(y * y) - mu_y**2)
    cov_xy = cov_norm * (local_mean(x * y) - mu_x * mu_y)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.reshape(b, c, -1).mean(dim=(1, 2))
