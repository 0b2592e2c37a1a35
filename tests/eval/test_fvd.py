"""Clip metrics: per-frame PSNR / SSIM against their formulas and skimage, and rFVD through a tiny
random TorchScript stand-in for StyleGAN-V's ``i3d_torchscript.pt`` (same call signature)."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from hydra_umm.cli import main
from hydra_umm.config import load_config
from hydra_umm.data.manifest import read_manifest
from hydra_umm.eval.frechet import fid_from_features
from hydra_umm.eval.fvd import (I3D_FILE, I3D_URL, clip_reconstruction_metrics, frame_psnr, frame_ssim, i3d_features,
                                load_i3d, rfvd)
from hydra_umm.eval.reconstruction import evaluate_clip_reconstruction
from hydra_umm.models.hydra_xtok import HydraXTok


class TinyI3D(torch.nn.Module):
    """The detector's interface: (n, 3, F, H, W) in [0, 255] with ``rescale`` (to [-1, 1]),
    ``resize`` (here to 16 x 16) and ``return_features`` (features, else class logits)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 12, kernel_size=3, stride=2)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        features = torch.tanh(self.conv(x)).mean(dim=(2, 3, 4))
        return features if return_features else self.head(features)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / I3D_FILE
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the real file comes in
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyI3D()).save(str(path))
    return path


@pytest.fixture(scope="module")
def clips():
    """Eight smooth random clips (8, 3, 5, 24, 24) in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(8, 3, 5, 6, 6, generator=g) * 2 - 1
    return F.interpolate(low, size=(5, 24, 24), mode="trilinear", align_corners=False)


def test_frame_psnr_matches_the_formula(clips):
    noisy = (clips + 0.1 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    ours = frame_psnr(clips, noisy)
    assert ours.shape == (8, 5)
    x, y = clips.numpy().astype(np.float64), noisy.numpy().astype(np.float64)
    for b in range(8):
        for f in range(5):
            mse = np.mean((x[b, :, f] - y[b, :, f]) ** 2)
            assert ours[b, f].item() == pytest.approx(10 * np.log10(2.0**2 / mse), rel=1e-9)
    assert frame_psnr((clips + 1) / 2, (noisy + 1) / 2, data_range=1.0) == pytest.approx(ours, rel=1e-5)
    worse = (clips + torch.linspace(0.05, 0.5, 8).view(8, 1, 1, 1, 1) * torch.randn(clips.shape)).clamp(-1, 1)
    per_frame = clip_reconstruction_metrics(clips, worse)["psnr_per_frame"]  # the mean over clips, frame by frame
    assert per_frame == pytest.approx(frame_psnr(clips, worse).mean(0).tolist(), rel=1e-6)


def test_frame_ssim_matches_skimage_per_frame(clips):
    other = clips.flip(2)  # frames in reverse order
    ours = frame_ssim(clips, other)
    assert ours.shape == (8, 5)
    for b, f in [(0, 0), (3, 1), (7, 4)]:
        ref = structural_similarity(clips[b, :, f].double().numpy(), other[b, :, f].double().numpy(),
                                    data_range=2.0, channel_axis=0)
        assert ours[b, f].item() == pytest.approx(ref, abs=1e-9)
    assert torch.allclose(frame_ssim(clips, clips), torch.ones(8, 5, dtype=torch.float64))


def test_clip_shapes_are_checked(clips):
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        frame_psnr(clips[0], clips[0])
    with pytest.raises(ValueError, match="same shape"):
        frame_ssim(clips, clips[:, :, :4])


def test_missing_i3d_file_says_what_to_get(tmp_path):
    for given in (None, tmp_path / I3D_FILE):
        with pytest.raises(FileNotFoundError, match=I3D_FILE) as err:
            load_i3d(given)
        assert I3D_URL in str(err.value) and "Nothing is downloaded" in str(err.value)


def test_i3d_features_feed_the_detector_as_stylegan_v_does(i3d_file, clips):
    net = load_i3d(i3d_file)
    feats = i3d_features(net, clips, batch_size=3)
    assert feats.shape == (8, 12) and feats.dtype == np.float64
    pixels = ((clips + 1) * 127.5).round()  # 8-bit values in [0, 255], rescaled and resized by the network
    ref = net(pixels, rescale=True, resize=True, return_features=True).detach().double().numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-6, atol=1e-7)


def test_frechet_of_identical_sets_is_zero_and_rfvd_grows_with_damage(i3d_file, clips):
    net = load_i3d(i3d_file)
    feats = i3d_features(net, clips)
    assert abs(fid_from_features(feats, feats)) < 1e-9
    assert abs(rfvd(net, clips, clips)) < 1e-9
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(clips.shape, generator=g)
    mild = rfvd(net, clips, (clips + 0.05 * noise).clamp(-1, 1))
    strong = rfvd(net, clips, (clips + 0.5 * noise).clamp(-1, 1))
    assert 0 < mild < strong
    result = clip_reconstruction_metrics(clips, (clips + 0.05 * noise).clamp(-1, 1), i3d=net)
    assert result["rfvd"] == pytest.approx(mild) and len(result["psnr_per_frame"]) == 5
    assert result["psnr"] == pytest.approx(frame_psnr(clips, (clips + 0.05 * noise).clamp(-1, 1)).mean().item())
    assert "rfvd" not in clip_reconstruction_metrics(clips, clips.flip(2))


def same_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-6) for k in a)


class ShiftTokenizer(torch.nn.Module):
    """A stand-in video tokenizer: encode is the identity, decode adds a fixed ripple."""

    def __init__(self):
        super().__init__()
        self.ripple = torch.nn.Parameter(torch.tensor(0.1))

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return clips

    def decode(self, z: torch.Tensor, steps=None, generator=None) -> torch.Tensor:
        return z + self.ripple * torch.sin(torch.arange(z.shape[-1], dtype=z.dtype))


def test_clip_reconstruction_goes_through_the_tokenizer_and_8_bit_frames(clips, i3d_file):
    tokenizer = ShiftTokenizer()
    result = evaluate_clip_reconstruction(tokenizer, clips, frames=5, i3d_weights=i3d_file, batch_size=3)
    originals = ((clips.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # 8-bit, as loaded clips are
    recon = tokenizer.decode(originals).detach().clamp(-1, 1)
    recon = ((recon + 1) * 127.5).round() / 127.5 - 1
    expected = clip_reconstruction_metrics(originals, recon, load_i3d(i3d_file))
    assert same_metrics(result, expected)
    with torch.no_grad():
        tokenizer.ripple.zero_()  # a perfect round trip
    assert evaluate_clip_reconstruction(tokenizer, clips, frames=5)["psnr"] == float("inf")
    with pytest.raises(ValueError, match="expected clips of 9 frames, got 5"):
        evaluate_clip_reconstruction(tokenizer, clips, frames=9)
    with pytest.raises(FileNotFoundError, match=I3D_FILE):
        evaluate_clip_reconstruction(tokenizer, clips, frames=5, i3d_weights="missing/i3d_torchscript.pt")


def test_eval_recon_accepts_clips(tmp_path, i3d_file):
    """`hydra-umm eval recon --frames 5` on a clip manifest with a tiny random HYDRA-XTok."""
    main(["shapes", "make", "--video", "--frames", "5", "--n", "8", "--size", "32", "--out", str(tmp_path / "clips")])
    cfg = load_config("xtok-tiny", ["tokenizer.lambda_lpips=0", "tokenizer.image_size=32"])
    torch.manual_seed(0)
    tokenizer = HydraXTok(cfg.tokenizer, cfg.xtok).eval()
    tokenizer.save_pretrained(tmp_path / "xtok")
    manifest = tmp_path / "clips" / "train.jsonl"
    main(["eval", "recon", "--model", str(tmp_path / "xtok"), "--images", str(manifest), "--frames", "5",
          "--i3d-weights", str(i3d_file), "--out", str(tmp_path / "result.json")])
    result = json.loads((tmp_path / "result.json").read_text())
    direct = evaluate_clip_reconstruction(tokenizer, manifest, frames=5, i3d_weights=i3d_file, size=32)
    assert same_metrics(result, direct) and result["n"] == len(read_manifest(manifest))
    assert np.isfinite(result["rfvd"]) and len(result["psnr_per_frame"]) == 5
