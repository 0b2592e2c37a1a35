"""HYDRA-TOK, the pure-ViT image tokenizer (DESIGN section 1).

    images (B, 3, H, W) in [-1, 1]
      -> Gen-ViT: patch embed (+ class token, + positions) and ViT blocks [0, k)   -> h  (B, N, D)
      -> GSB: compress to (mu, logvar), z = mu + sigma * eps                        -> z  (B, N, c)
      -> GSB: reconstruct                                                           -> h' (B, N, D)
      -> Sem-ViT: the class token prepended again, ViT blocks [k, depth)           -> s  (B, N, D)
    z -> pixel flow decoder (ODE from noise) or deterministic ViT decoder (one pass) -> images

Latent statistics: per-channel mean and std of z over training images, recorded once the encoder is
final (:meth:`record_latent_stats`); ``standardise`` maps z to zero mean and unit variance per
channel, the space in which HYDRA's flow head works (its noise is N(0, I)).

Gen-ViT and Sem-ViT are the two halves of ONE timm InternViT (``self.vit``). At the GSB the class
token is dropped; Sem-ViT starts from the learned class token (with its position embedding) and h',
so its output depends on z alone: HYDRA feeds noised latents through the same path.

Training (``forward``): stage 1 trains everything end to end on a sampled z with the flow, LPIPS,
KL, consistency and self-distillation losses against a frozen teacher ViT; stage 2 freezes the
encoder (z = posterior mean, computed without gradients) and refines the decoder with flow, LPIPS
and a hinge GAN loss. With the ViT decoder the flow term is replaced by L1 on the decoded image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import load_checkpoint
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from hydra_umm import flow
from hydra_umm.config import TokenizerConfig, from_dict, to_dict
from hydra_umm.losses.adversarial import hinge_d_loss, hinge_g_loss
from hydra_umm.losses.distillation import distillation_loss
from hydra_umm.models.bottleneck import GenerationSemanticBottleneck, consistency_loss, kl_loss
from hydra_umm.models.discriminator import PatchDiscriminator
from hydra_umm.models.pixel_decoder import PixelFlowDecoder
from hydra_umm.models.vit import InputNormalization, build_vit, check_image_size
from hydra_umm.models.vit_decoder import ViTDecoder
from hydra_umm.models.weights import fit_weights, in_brief, read_weights

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
DECODERS = {"flow": PixelFlowDecoder, "vit": ViTDecoder}


def _timm_state_filter(state: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """timm's own ViT checkpoint conversion (position/patch embedding resampling), minus any head."""
    return {k: v for k, v in checkpoint_filter_fn(state, model).items() if not k.startswith("head.")}


class HydraTok(nn.Module):
    def __init__(self, cfg: TokenizerConfig, *, load_weights: bool = True):
        """``load_weights``: read ``cfg.teacher_weights`` (when set) into teacher and student; off
        when the weights come from a saved HydraTok instead."""
        super().__init__()
        if not 0 < cfg.gen_depth < cfg.depth:
            raise ValueError(f"gen_depth must be in [1, depth - 1] = [1, {cfg.depth - 1}], got {cfg.gen_depth}")
        bad = [i for i in cfg.distill_layers if not 0 <= i < cfg.depth]
        if bad or not cfg.distill_layers:
            raise ValueError(
                f"distill_layers must be non-empty block indices in [0, {cfg.depth}), got {cfg.distill_layers}"
            )
        if cfg.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {cfg.decoder!r}; use one of {', '.join(DECODERS)}")
        self.cfg = cfg
        self.vit = build_vit(cfg)  # student: Gen-ViT = blocks[:k], Sem-ViT = blocks[k:]
        self.bottleneck = GenerationSemanticBottleneck(cfg.width, cfg.latent_dim)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))
        self.decoder = DECODERS[cfg.decoder](
            self.grid, cfg.patch_size, cfg.latent_dim, cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads
        )
        self.discriminator = PatchDiscriminator(cfg.disc_width)
        self.teacher = build_vit(cfg).requires_grad_(False).eval()
        self.normalise = InputNormalization(cfg)
        # frozen loss networks (LPIPS' VGG16) live outside the parameter tree: built on first use, never saved
        self._loss_networks: dict[str, nn.Module] = {}
        if load_weights and cfg.teacher_weights:
            self.load_internvit(cfg.teacher_weights)
        else:
            self.init_from_teacher()

    # ------------------------------------------------------------------ structure

    @property
    def grid(self) -> tuple[int, int]:
        """Latent grid (H/p, W/p)."""
        side = self.cfg.image_size // self.cfg.patch_size
        return side, side

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def gen_vit_modules(self) -> list[nn.Module]:
        """Everything Gen-ViT computes with. The class token and position table are parameters of
        ``self.vit`` itself (shared with Sem-ViT's prefix); they come as one ParameterList holding
        the very same Parameter objects, so ``requires_grad_(False)`` on every module freezes Gen-ViT."""
        vit = self.vit
        embeddings = nn.ParameterList([vit.cls_token, vit.pos_embed])
        return [embeddings, vit.patch_embed, vit.patch_drop, vit.norm_pre, *vit.blocks[: self.cfg.gen_depth]]

    def train(self, mode: bool = True) -> "HydraTok":
        super().train(mode)
        self.teacher.eval()  # the teacher is a fixed target
        return self

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def init_from_teacher(self) -> None:
        """Copy the teacher's weights into the student ViT (the paper's initialisation)."""
        self.vit.load_state_dict(self.teacher.state_dict())

    def load_internvit(self, path: str | Path) -> None:
        """Load a local timm InternViT checkpoint (.safetensors or .pth) into teacher and student."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"InternViT checkpoint not found: {path}")
        try:
            load_checkpoint(self.teacher, str(path), filter_fn=_timm_state_filter)
        except Exception as e:  # an unreadable file or another model's weights, as timm and torch report them
            raise ValueError(f"{path} is not a timm InternViT checkpoint of this size ({in_brief(e)})") from None
        self.init_from_teacher()

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (the TokenizerConfig) and ``model.safetensors`` (student, GSB, decoder,
        discriminator and teacher)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "HydraTok":
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"not a saved {cls.__name__}: {directory / name} is missing")
        model = cls.from_config_dict(json.loads((directory / CONFIG_FILE).read_text()), directory / CONFIG_FILE)
        fit_weights(model, read_weights(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
        return model

    def config_dict(self) -> dict:
        """What ``config.json`` holds: the TokenizerConfig."""
        return to_dict(self.cfg)

    @classmethod
    def from_config_dict(cls, config: dict, source: Path) -> "HydraTok":
        """An untrained model of the configuration :meth:`config_dict` wrote (read from ``source``)."""
        if "tokenizer" in config:  # a HYDRA-XTok's {"tokenizer", "xtok"} or a unified model's Config
            kind = "a HYDRA-XTok" if "xtok" in config and "llm" not in config else "a unified model (HYDRA or Harmon)"
            raise ValueError(f"{source} is the config of {kind}, not of a HYDRA-TOK: give the directory of a "
                             "tokenizer run's model")
        return cls(from_dict(TokenizerConfig, config), load_weights=False)

    # ------------------------------------------------------------------ encoder

    @staticmethod
    def _blocks(vit: VisionTransformer, x: Tensor, layers: range, taps: dict[int, Tensor]) -> Tensor:
        """Run ``vit.blocks[i]`` for i in ``layers``; patch tokens after block i go to taps[i] if i is a key."""
        for i in layers:
            x = vit.blocks[i](x)
            if i in taps:
                taps[i] = x[:, vit.num_prefix_tokens :]
        return x

    @staticmethod
    def _embed(vit: VisionTransformer, x: Tensor) -> Tensor:
        """Normalised images -> (B, 1 + N, D): patch embed, class token, positions."""
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def _gen(self, images: Tensor, taps: dict[int, Tensor]) -> Tensor:
        check_image_size(images, self.cfg)
        x = self._embed(self.vit, self.normalise(images))
        x = self._blocks(self.vit, x, range(self.cfg.gen_depth), taps)
        return x[:, self.num_prefix_tokens :]

    def _sem(self, h_prime: Tensor, taps: dict[int, Tensor]) -> Tensor:
        vit = self.vit
        prefix = (vit.cls_token + vit.pos_embed[:, :1]).expand(h_prime.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([prefix, h_prime], dim=1)
        x = self._blocks(vit, x, range(self.cfg.gen_depth, self.cfg.depth), taps)
        return vit.norm(x)[:, self.num_prefix_tokens :]

    def gen_features(self, images: Tensor) -> Tensor:
        """Gen-ViT patch tokens h (B, N, D), before the bottleneck."""
        return self._gen(images, {})

    def sem_features(self, h_prime: Tensor) -> Tensor:
        """Sem-ViT patch tokens s (B, N, D) from reconstructed features h' (B, N, D)."""
        return self._sem(h_prime, {})

    def sem_input(self, z: Tensor) -> Tensor:
        """The GSB reconstruction h' (..., N, D) Sem-ViT reads from latents z (..., N, c) as encoded."""
        return self.bottleneck.reconstruct(z)

    def encode(self, images: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """z (B, N, c): the posterior mean, or a draw from the posterior with ``sample=True``."""
        mu, logvar = self.bottleneck.compress(self.gen_features(images))
        return self.bottleneck.sample(mu, logvar, generator) if sample else mu

    def semantic(self, images: Tensor) -> Tensor:
        """Semantic features s (B, N, D) of clean images (through the posterior mean)."""
        return self.sem_features(self.sem_input(self.encode(images)))

    @torch.no_grad()
    def record_latent_stats(self, batches: Iterable[Tensor]) -> None:
        """Per-channel mean and std of the posterior mean z over every latent token of ``batches`` (of
        images, or of whatever else ``encode`` takes)."""
        total = torch.zeros_like(self.latent_mean, dtype=torch.float64)
        total_sq, count = torch.zeros_like(total), 0
        for images in batches:
            z = self.encode(images).reshape(-1, self.cfg.latent_dim).double()  # (tokens, c)
            total, total_sq, count = total + z.sum(0), total_sq + z.pow(2).sum(0), count + len(z)
        if not count:
            raise ValueError("record_latent_stats needs at least one batch of images")
        mean = total / count
        self.latent_mean.copy_(mean)
        self.latent_std.copy_((total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt())

    def standardise(self, z: Tensor) -> Tensor:
        """z -> (z - mean) / std per channel (identity until statistics are recorded)."""
        return (z - self.latent_mean) / self.latent_std

    def unstandardise(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`standardise`."""
        return z * self.latent_std + self.latent_mean

    @torch.no_grad()
    def student_features(self, images: Tensor) -> dict[int, Tensor]:
        """Student patch tokens after each block in cfg.distill_layers, through the posterior mean
        (the deterministic path; the counterpart of :meth:`teacher_features`)."""
        taps = dict.fromkeys(self.cfg.distill_layers)
        mu, _ = self.bottleneck.compress(self._gen(images, taps))
        self._sem(self.sem_input(mu), taps)
        return taps

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> dict[int, Tensor]:
        """Teacher patch tokens after each block in cfg.distill_layers."""
        check_image_size(images, self.cfg)
        taps = dict.fromkeys(self.cfg.distill_layers)
        self._blocks(self.teacher, self._embed(self.teacher, self.normalise(images)), range(max(taps) + 1), taps)
        return taps

    # ------------------------------------------------------------------ decoder

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """z (B, N, c) -> images (B, 3, H, W) in [-1, 1]: the flow decoder integrates its ODE from
        noise (``steps``, ``sampler``, ``generator``); the ViT decoder needs one pass and ignores them."""
        n, c = self.grid[0] * self.grid[1], self.cfg.latent_dim
        if z.dim() != 3 or z.shape[1:] != (n, c):
            raise ValueError(f"expected latents of shape (B, {n}, {c}), got {tuple(z.shape)}")
        if self.cfg.decoder == "vit":
            return self.decoder(z).clamp(-1, 1)
        size, z = self.cfg.image_size, z.float()  # the ODE state in fp32, also under bf16 autocast
        x0 = torch.randn((z.shape[0], 3, size, size), generator=generator, device=z.device)
        images = flow.sample(
            lambda x, t: self.decoder(x, t, z),
            x0,
            self.cfg.decode_steps if steps is None else steps,
            sampler or self.cfg.flow.sampler,
            self.cfg.flow.shift,
        )
        return images.clamp(-1, 1)

    def perceptual(self, device: torch.device) -> nn.Module:
        """LPIPS-VGG16 (weights from cfg.lpips_weights), built on first use."""
        if "lpips" not in self._loss_networks:
            from hydra_umm.losses.perceptual import PerceptualLoss  # loads torchvision: only when training

            self._loss_networks["lpips"] = PerceptualLoss(self.cfg.lpips_weights)
        return self._loss_networks["lpips"].to(device)

    def _decoder_losses(self, images: Tensor, z: Tensor, generator: Optional[torch.Generator]) -> tuple[dict, Tensor]:
        """The decoder's reconstruction term (flow matching on pixels conditioned on z, or L1 of the
        ViT decoder's image) and LPIPS of its estimate x1_hat. Returns the losses and x1_hat."""
        if self.cfg.decoder == "vit":
            x1_hat = self.decoder(z)
            losses = {"loss_l1": F.l1_loss(x1_hat, images)}
        else:
            fc = self.cfg.flow
            x0 = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            t = flow.sample_t(images.shape[0], fc.t_sampling, fc.t_mean, fc.t_std, images.device, generator)
            x_t = flow.interpolate(x0, images, t)
            v_hat = self.decoder(x_t, t, z)
            losses = {"loss_flow": F.mse_loss(v_hat, flow.velocity_target(x0, images))}
            x1_hat = flow.clean_estimate(x_t, v_hat, t)
        if self.cfg.lambda_lpips > 0:
            losses["loss_lpips"] = self.perceptual(images.device)(x1_hat, images)
        return losses, x1_hat

    def _judge_frozen(self, images: Tensor) -> Tensor:
        """Discriminator logits whose gradient reaches the images but not the discriminator."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, frozen, (images,))

    # ------------------------------------------------------------------ training

    def forward(self, images: Tensor, stage: int = 1, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """Every loss term and ``loss``, their weighted total (weights from the config).

        Stage 1: loss_flow (loss_l1 with the ViT decoder), loss_lpips, loss_kl, loss_cons,
        loss_distill. Stage 2: loss_flow (loss_l1), loss_lpips, loss_gan, and ``loss_disc`` (the
        discriminator's hinge loss on the detached clean estimate; not part of ``loss``). ``loss`` never reaches the discriminator's weights
        and ``loss_disc`` reaches nothing else, so ``loss + loss_disc`` can drive one optimiser.
        loss_lpips is absent when lambda_lpips is 0 (the VGG is then never built).
        """
        cfg = self.cfg
        if stage == 1:
            taps = dict.fromkeys(cfg.distill_layers)
            h = self._gen(images, taps)
            mu, logvar = self.bottleneck.compress(h)
            z = self.bottleneck.sample(mu, logvar, generator)
            h_prime = self.sem_input(z)
            self._sem(h_prime, taps)  # Sem-ViT's part of the student taps (its output s has no loss of its own)
            teacher = self.teacher_features(images)
            losses, _ = self._decoder_losses(images, z, generator)
            losses["loss_kl"] = kl_loss(mu, logvar)
            losses["loss_cons"] = consistency_loss(h_prime, h, cfg.cons_stop_grad)
            losses["loss_distill"] = distillation_loss(
                [taps[i] for i in cfg.distill_layers], [teacher[i] for i in cfg.distill_layers]
            )
            weights = {"loss_kl": cfg.lambda_kl, "loss_cons": cfg.lambda_cons, "loss_distill": cfg.lambda_distill}
        elif stage == 2:
            with torch.no_grad():
                z = self.encode(images)  # the frozen encoder's posterior mean, as at inference
            losses, x1_hat = self._decoder_losses(images, z, generator)
            losses["loss_gan"] = hinge_g_loss(self._judge_frozen(x1_hat))
            weights = {"loss_gan": cfg.lambda_gan}
        else:
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        weights.update(loss_flow=1.0, loss_l1=cfg.lambda_l1, loss_lpips=cfg.lambda_lpips)
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        if stage == 2:
            losses["loss_disc"] = hinge_d_loss(self.discriminator(images), self.discriminator(x1_hat.detach()))
        return losses
