"""The KL autoencoder of Harmon (DESIGN section 5): MAR's KL-16, the LDM convolutional autoencoder.

    x (B, 3, H, W) in [-1, 1] -> Encoder -> quant_conv -> posterior N(mean, exp(logvar)), 2c channels
    latent tokens z = scale * mean, (B, (H/s)(W/s), c) with stride s = 2 ** (len(ch_mult) - 1)
    z / scale -> post_quant_conv -> Decoder -> x_hat

Module names follow LDM / MAR (``encoder.down.0.block.0.norm1``, ``quant_conv``, ...) so that MAR's
released ``kl16.ckpt`` loads from a local path. As in KL-16, self-attention sits in the middle
blocks and in the deepest resolution level. Encoding returns the posterior mode (its mean).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydra_umm.config import HarmonConfig
from hydra_umm.models.weights import read_weights

WEIGHTS_FILE = "vae.safetensors"


def _norm(channels: int) -> nn.GroupNorm:
    """LDM's GroupNorm of 32 groups (fewer where 32 does not divide the channels: tiny autoencoders)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map (1x1 convolutions)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResnetBlock(channels, channels), AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_mid(mid: nn.Module, h: Tensor) -> Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: Tensor) -> Tensor:
    """A resolution level's ResNet blocks, each followed by its attention block where the level has them."""
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int):
        super().__init__()
        levels = len(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
                if i == levels - 1:
                    level.attn.append(AttnBlock(block_in))
            if i != levels - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(_run_mid(self.mid, h))))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int):
        super().__init__()
        levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        up: list[nn.Module] = []
        for i in reversed(range(levels)):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * ch_mult[i]))
                block_in = ch * ch_mult[i]
                if i == levels - 1:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
            up.insert(0, level)
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """Pixels <-> latent tokens (B, N, c), N = (H/stride)(W/stride), c = ``cfg.latent_dim``."""

    def __init__(self, cfg: HarmonConfig):
        super().__init__()
        if not cfg.vae_ch_mult:
            raise ValueError("vae_ch_mult must name at least one level")
        self.stride = 2 ** (len(cfg.vae_ch_mult) - 1)
        if cfg.image_size % self.stride:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of the autoencoder stride {self.stride}")
        c = cfg.latent_dim
        self.scale = cfg.latent_scale
        self.grid = cfg.image_size // self.stride
        self.encoder = Encoder(cfg.vae_channels, cfg.vae_ch_mult, cfg.vae_res_blocks, c)
        self.decoder = Decoder(cfg.vae_channels, cfg.vae_ch_mult, cfg.vae_res_blocks, c)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> mean and log-variance, each (B, c, H/s, W/s)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        """Pixels -> scaled posterior-mode latent tokens (B, N, c), row-major over the grid."""
        mean, _ = self.posterior(x)
        return (self.scale * mean).flatten(2).transpose(1, 2)

    def decode(self, z: Tensor) -> Tensor:
        """Latent tokens (B, N, c) -> pixels (B, 3, H, W)."""
        B, N, c = z.shape
        if N != self.grid * self.grid:
            raise ValueError(f"expected {self.grid * self.grid} latent tokens, got {N}")
        z = (z / self.scale).transpose(1, 2).reshape(B, c, self.grid, self.grid)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, lambda_kl: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training losses: L1 reconstruction from a posterior sample + lambda_kl * KL(posterior || N(0, I))."""
        mean, logvar = self.posterior(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, device=x.device, generator=generator)
        x_hat = self.decoder(self.post_quant_conv(z))
        loss_rec = (x_hat - x).abs().mean()
        loss_kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return {"loss": loss_rec + lambda_kl * loss_kl, "loss_rec": loss_rec.detach(), "loss_kl": loss_kl.detach()}

    def save_pretrained(self, directory: str | Path) -> None:
        """``<directory>/vae.safetensors``, which :meth:`load_weights` reads (given the file or the directory)."""
        from safetensors.torch import save_model

        Path(directory).mkdir(parents=True, exist_ok=True)
        save_model(self, str(Path(directory) / WEIGHTS_FILE))

    def load_weights(self, path: str | Path) -> None:
        """Weights from a local ``.safetensors`` or torch checkpoint (MAR's ``kl16.ckpt`` keeps them under
        "model"), or a directory written by :meth:`save_pretrained`. Keys this autoencoder lacks (e.g. a
        training discriminator's) are ignored; a missing or misshapen one is an error."""
        path = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"autoencoder weights not found: {path} (set harmon.vae_path to a local file)")
        state = read_weights(path)
        state = state.get("model", state.get("state_dict", state))
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"{path} is not a KL autoencoder of this shape: {len(missing)} missing keys, "
                             f"e.g. {missing[:3]}")
        self.load_state_dict({k: state[k] for k in own})
