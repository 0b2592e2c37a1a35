"""Clip reconstruction metrics: per-frame PSNR / SSIM and rFVD.

FVD is the Frechet distance (``frechet.fid_from_features``, shared with FID) between Gaussians
fitted to the 400-d features of the Kinetics-400 I3D of Unterthiner et al. 2018, in the TorchScript
port that StyleGAN-V and the common FVD code use (``i3d_torchscript.pt``): called as
``net(x, rescale=True, resize=True, return_features=True)`` on float clips (n, 3, F, H, W) with
values in [0, 255] (it rescales to [-1, 1] and resizes to 224 x 224 itself; StyleGAN-V evaluates 16
frames). rFVD is FVD between original clips and their reconstructions. The file comes from a local
path the user gives; nothing is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from hydra_umm.data.transforms import to_uint8
from hydra_umm.eval.frechet import fid_from_features
from hydra_umm.eval.metrics import psnr, ssim

I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"  # StyleGAN-V's detector_url
I3D_KWARGS = {"rescale": True, "resize": True, "return_features": True}


def _check_clips(x: torch.Tensor, name: str = "clips") -> None:
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"expected {name} (B, 3, F, H, W), got shape {tuple(x.shape)}")


def _per_frame(metric, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """An image metric (B, 3, H, W) -> (B,) applied to every frame: (B, 3, F, H, W) x2 -> (B, F)."""
    _check_clips(x)
    if x.shape != y.shape:
        raise ValueError(f"clips must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    b, _, f = x.shape[:3]
    x, y = (z.transpose(1, 2).flatten(0, 1) for z in (x, y))  # (B * F, 3, H, W)
    return metric(x, y, **kwargs).view(b, f)


def frame_psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR (dB) of every frame: clips (B, 3, F, H, W) x2 -> (B, F)."""
    return _per_frame(psnr, x, y, data_range=data_range)


def frame_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """SSIM of every frame: clips (B, 3, F, H, W) x2 -> (B, F)."""
    return _per_frame(ssim, x, y, data_range=data_range)


def load_i3d(weights_path: str | Path | None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D feature network from a local ``i3d_torchscript.pt``."""
    how = (f"rFVD needs the I3D TorchScript file {I3D_FILE} (the Kinetics-400 I3D of the FVD paper as "
           f"exported by StyleGAN-V), downloaded once by you on a machine with network access from {I3D_URL}; "
           f"pass its local path. Nothing is downloaded here.")
    if weights_path is None:
        raise FileNotFoundError(f"no I3D weights given. {how}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found at {path}. {how}")
    with warnings.catch_warnings():  # torch deprecates TorchScript; the detector is published only as one
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


@torch.no_grad()
def i3d_features(net: torch.nn.Module, clips: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """I3D features (n, d) of clips (n, 3, F, H, W) in [-1, 1], quantised to 8 bits as a saved clip is."""
    _check_clips(clips)
    device = next(iter(net.parameters())).device
    out = []
    for chunk in clips.split(batch_size):
        out.append(net(to_uint8(chunk).float().to(device), **I3D_KWARGS).double().cpu())  # [0, 255]
    return torch.cat(out).numpy()


def rfvd(net: torch.nn.Module, originals: torch.Tensor, reconstructions: torch.Tensor, batch_size: int = 8) -> float:
    """Reconstruction FVD between original clips and their reconstructions (each (n, 3, F, H, W))."""
    return fid_from_features(i3d_features(net, originals, batch_size), i3d_features(net, reconstructions, batch_size))


def clip_reconstruction_metrics(originals: torch.Tensor, reconstructions: torch.Tensor,
                                i3d: torch.nn.Module | None = None) -> dict:
    """Mean PSNR and SSIM over all frames, PSNR per frame index (mean over clips) and, with an I3D
    network, rFVD, for original clips and their reconstructions (n, 3, F, H, W) in [-1, 1]."""
    frame_psnrs = frame_psnr(originals, reconstructions)
    result = {"n": float(len(originals)), "frames": float(originals.shape[2]), "psnr": frame_psnrs.mean().item(),
              "ssim": frame_ssim(originals, reconstructions).mean().item(),
              "psnr_per_frame": frame_psnrs.mean(0).tolist()}
    if i3d is not None:
        result["rfvd"] = rfvd(i3d, originals, reconstructions)
    return result
