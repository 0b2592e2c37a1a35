"""HYDRA-XTok: one ViT tokenizer for images and videos (DESIGN section 4), HYDRA-TOK extended in time.

    clip (B, 3, 1 + T, H, W) in [-1, 1], T a multiple of 4, frame 0 the anchor (an image: T = 0)
      -> spatiotemporal patch embedding, 2x in time (hier) or 4x (single), anchor zero-padded
                                                                     -> (B, 1 + T/2 or T/4, N, D)
      -> Gen-ViT blocks [0, k) with 3D RoPE and the frame pattern (full | causal | tubelet);
         hier: after block ``merge_after`` a second 2x temporal patchify, anchor zero-padded
                                                                     -> h  (B, 1 + T/4, N, D)
      -> GSB compress, z = mu + sigma eps                            -> z  (B, 1 + T/4, h, w, c)
      -> GSB reconstruct of the standardised z, Sem-ViT blocks [k, depth)
                                                                     -> s  (B, 1 + T/4, h, w, D)
    z -> per-frame latents (anchor: its own; the rest: a Decompressor, 4x in time)
      -> the tokenizer's image decoder (deterministic ViT, or the pixel flow decoder) per frame

Both temporal patchify stages are linear in their group of frames, written in residual form:
the group's last frame goes through the image path (the ViT's own patch embedding; identity at
the second stage) and the earlier frames through an added zero-initialised, bias-free map. That
is a Conv3d (Linear over 2D) whose earlier temporal slices start at zero, so the zero-padded
anchor is exactly the image path and the student starts from its image teacher frame by frame.
The ViT is HYDRA-TOK's timm InternViT (teacher-initialised) without class token and position
table: 3D RoPE gives the positions.

Training (``forward``), images or clips per batch:
- stage 1: everything but the teachers: the decoder's terms on every frame (L1 or flow, LPIPS),
  GSB KL and consistency, and the distillation 1 - cos(s_0, image teacher(anchor)) +
  1 - cos(Decompressor(s_{1:}), video teacher(frames 1..T)); the video term is 0 for images;
- stage 2: encoder frozen, decoder refined with the GAN (as HYDRA-TOK's stage 2);
- stage 3: after :meth:`record_latent_stats`, Gen-ViT and decoder frozen: Sem-ViT (with the GSB
  reconstruct layer and the Decompressor) trains on standardised latents (consistency + distillation).
Sem-ViT always reads ``standardise(z)`` (the identity until statistics are recorded).

Editing (:meth:`edit_features`): source and target are encoded on their own by the image path and
Sem-ViT runs over [z_src; z_tgt] with the tubelet mask, so s_src sees z_src alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from hydra_umm.config import TokenizerConfig, XTokConfig, from_dict, to_dict
from hydra_umm.losses.adversarial import hinge_d_loss, hinge_g_loss
from hydra_umm.losses.distillation import cosine_distance
from hydra_umm.models.bottleneck import consistency_loss, kl_loss
from hydra_umm.models.decompressor import Decompressor
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.spacetime import check_attention, spacetime_block, strip_positions, temporal_groups
from hydra_umm.models.vit import InputNormalization, build_vit, check_image_size
from hydra_umm.models.weights import fit_weights, read_weights

TIME_COMPRESSION = 4  # the frames after the anchor are compressed 4x in time
COMPRESSIONS = ("hier", "single")


def check_clip(clip: Tensor, cfg: TokenizerConfig) -> None:
    """Raise a ValueError naming the problem unless ``clip`` is (B, 3, 1 + 4k, S, S)."""
    if clip.dim() != 5 or clip.shape[1] != 3:
        raise ValueError(f"expected a clip of shape (B, 3, 1 + T, H, W), got {tuple(clip.shape)}")
    if (clip.shape[2] - 1) % TIME_COMPRESSION:
        raise ValueError(
            f"a clip has 1 + T frames with T a multiple of {TIME_COMPRESSION} (an anchor, then the rest), "
            f"got {clip.shape[2]} frames"
        )
    check_image_size(clip[:, :, 0], cfg)


class VideoTeacher(nn.Module):
    """The video teacher: a ViT of the tokenizer's architecture (timm InternViT, no class token or
    position table) over every frame of a clip at once, full spacetime attention with 3D RoPE, one
    latent frame per frame. Frozen; its ViT weights come from a local safetensors file."""

    def __init__(self, cfg: TokenizerConfig, rope_theta: float):
        super().__init__()
        self.vit = strip_positions(build_vit(cfg))
        self.normalise = InputNormalization(cfg)
        self.grid, self.rope_theta = (cfg.image_size // cfg.patch_size,) * 2, rope_theta
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "VideoTeacher":
        return super().train(False)  # a fixed target

    def load(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"video teacher weights not found: {path}")
        fit_weights(self.vit, read_weights(path), path)

    def forward(self, frames: Tensor) -> Tensor:
        """frames (B, 3, T, H, W) in [-1, 1] -> features (B, T, N, D)."""
        b, _, t = frames.shape[:3]
        x = self.vit.patch_embed(self.normalise(frames.transpose(1, 2).flatten(0, 1))).flatten(1, 2)  # (B T, N, D)
        n, d = x.shape[1:]
        x = self.vit.norm_pre(x).reshape(b, t * n, d)
        for block in self.vit.blocks:
            x = spacetime_block(block, x, t, self.grid, "full", self.rope_theta)
        return self.vit.norm(x).view(b, t, n, d)


class HydraXTok(HydraTok):
    def __init__(self, cfg: TokenizerConfig, xcfg: XTokConfig, *, load_weights: bool = True):
        """``load_weights``: read ``cfg.teacher_weights`` (image teacher and student) and
        ``xcfg.video_teacher_weights`` when set; off when the weights come from a saved HydraXTok."""
        check_attention(xcfg.attention)
        if xcfg.temporal_compression not in COMPRESSIONS:
            raise ValueError(
                f"unknown temporal_compression {xcfg.temporal_compression!r}; use one of {', '.join(COMPRESSIONS)}"
            )
        if xcfg.temporal_compression == "hier" and not 1 <= xcfg.merge_after <= cfg.gen_depth:
            raise ValueError(f"merge_after must be in [1, gen_depth] = [1, {cfg.gen_depth}], got {xcfg.merge_after}")
        super().__init__(cfg, load_weights=load_weights)  # ViT, GSB, image decoder, discriminator, image teacher
        self.xcfg = xcfg
        strip_positions(self.vit)
        d, p, c = cfg.width, cfg.patch_size, cfg.latent_dim
        self.first_factor = 2 if self.hierarchical else TIME_COMPRESSION
        # the earlier frames of each group at the patch embedding and at the second stage (zero at init)
        self.temporal_embed = nn.Conv2d(3 * (self.first_factor - 1), d, p, p, bias=False)
        nn.init.zeros_(self.temporal_embed.weight)
        self.temporal_merge = nn.Linear(d, d, bias=False) if self.hierarchical else None
        if self.temporal_merge is not None:
            nn.init.zeros_(self.temporal_merge.weight)
        theta = xcfg.rope_theta
        self.decompressor = Decompressor(d, d, d, cfg.num_heads, self.grid, xcfg.attention, cfg.mlp_ratio, theta)
        self.latent_decompressor = Decompressor(
            c, cfg.decoder_width, c, cfg.decoder_heads, self.grid, xcfg.attention, cfg.mlp_ratio, theta
        )
        self.video_teacher = VideoTeacher(cfg, theta)
        if load_weights and xcfg.video_teacher_weights:
            self.video_teacher.load(xcfg.video_teacher_weights)

    # ------------------------------------------------------------------ structure

    @property
    def hierarchical(self) -> bool:
        return self.xcfg.temporal_compression == "hier"

    def gen_vit_modules(self) -> list[nn.Module]:
        """Everything Gen-ViT computes with (freeze these for stage 3 and in HYDRA)."""
        vit, k = self.vit, self.cfg.gen_depth
        temporal = [self.temporal_embed] + ([self.temporal_merge] if self.temporal_merge is not None else [])
        return [vit.patch_embed, vit.norm_pre, *temporal, *vit.blocks[:k]]

    def sem_vit_modules(self) -> list[nn.Module]:
        """What stage 3 trains: the GSB reconstruct layer, Sem-ViT and the Decompressor."""
        return [self.bottleneck.reconstruct, *self.vit.blocks[self.cfg.gen_depth :], self.vit.norm, self.decompressor]

    def train(self, mode: bool = True) -> "HydraXTok":
        super().train(mode)
        self.video_teacher.eval()
        return self

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def init_from_teacher(self) -> None:
        """Copy the image teacher's weights into the student ViT (all it has: no class token or positions)."""
        own = self.vit.state_dict()
        self.vit.load_state_dict({k: v for k, v in self.teacher.state_dict().items() if k in own})

    def config_dict(self) -> dict:
        """What ``config.json`` holds: {"tokenizer": ..., "xtok": ...} (the weights keep everything,
        teachers included)."""
        return {"tokenizer": to_dict(self.cfg), "xtok": to_dict(self.xcfg)}

    @classmethod
    def from_config_dict(cls, config: dict, source: Path) -> "HydraXTok":
        if "xtok" not in config:
            raise ValueError(f"{source} is not a HydraXTok config (no 'xtok' section)")
        cfg, xcfg = from_dict(TokenizerConfig, config["tokenizer"]), from_dict(XTokConfig, config["xtok"])
        return cls(cfg, xcfg, load_weights=False)

    # ------------------------------------------------------------------ encoder

    def _block(self, i: int, x: Tensor, taps: dict[int, Tensor], attention: str) -> Tensor:
        """ViT block i over tokens (B, F, N, D); its output goes to taps[i] if i is a key."""
        b, f, n, d = x.shape
        x = spacetime_block(self.vit.blocks[i], x.flatten(1, 2), f, self.grid, attention, self.xcfg.rope_theta)
        x = x.view(b, f, n, d)
        if i in taps:
            taps[i] = x
        return x

    def _merge(self, x: Tensor) -> Tensor:
        """Second temporal patchify: (B, 1 + 2k, N, D) -> (B, 1 + k, N, D)."""
        groups = temporal_groups(x, 2)  # (B, 1 + k, 2, N, D)
        return groups[:, :, 1] + self.temporal_merge(groups[:, :, 0])

    def _gen_clip(self, clip: Tensor, taps: dict[int, Tensor]) -> Tensor:
        """Gen-ViT: clip (B, 3, 1 + T, H, W) -> h (B, 1 + T/4, N, D)."""
        check_clip(clip, self.cfg)
        b = clip.shape[0]
        x = self.normalise(clip.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, -1))  # (B, 1 + T, 3, H, W)
        groups = temporal_groups(x, self.first_factor)  # (B, G, f, 3, H, W), zero frames ahead of the anchor
        g = groups.shape[1]
        tokens = self.vit.patch_embed(groups[:, :, -1].flatten(0, 1))  # (B G, h, w, D): timm's NHWC here
        earlier = self.temporal_embed(groups[:, :, :-1].flatten(2, 3).flatten(0, 1))  # (B G, D, h, w)
        x = (tokens + earlier.permute(0, 2, 3, 1)).flatten(1, 2)  # (B G, N, D)
        x = self.vit.norm_pre(x).unflatten(0, (b, g))  # (B, G, N, D)
        for i in range(self.cfg.gen_depth):
            x = self._block(i, x, taps, self.xcfg.attention)
            if self.hierarchical and i + 1 == self.xcfg.merge_after:
                x = self._merge(x)
        return x

    def _sem_clip(self, h_prime: Tensor, taps: dict[int, Tensor], attention: Optional[str] = None) -> Tensor:
        """Sem-ViT: h' (B, F, N, D) -> s (B, F, N, D) under ``attention`` (default: the configured one)."""
        x = h_prime
        for i in range(self.cfg.gen_depth, self.cfg.depth):
            x = self._block(i, x, taps, attention or self.xcfg.attention)
        return self.vit.norm(x)

    # HYDRA-TOK's image interface (gen_features, sem_features, encode, student_features): one frame
    def _gen(self, images: Tensor, taps: dict[int, Tensor]) -> Tensor:
        check_image_size(images, self.cfg)
        own = {i: None for i in taps if i < self.cfg.gen_depth}
        h = self._gen_clip(images[:, :, None], own)[:, 0]
        taps.update({i: x[:, 0] for i, x in own.items()})
        return h

    def _sem(self, h_prime: Tensor, taps: dict[int, Tensor]) -> Tensor:
        own = {i: None for i in taps if i >= self.cfg.gen_depth}
        s = self._sem_clip(h_prime[:, None], own)[:, 0]
        taps.update({i: x[:, 0] for i, x in own.items()})
        return s

    def _as_grid(self, x: Tensor) -> Tensor:
        return x.unflatten(2, self.grid)  # (B, F, N, C) -> (B, F, h, w, C)

    def encode(self, x: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images (B, 3, H, W) -> z (B, N, c), as HYDRA-TOK; clips (B, 3, 1 + T, H, W) ->
        z (B, 1 + T/4, h, w, c). The posterior mean, or a draw with ``sample=True``."""
        if x.dim() != 5:
            return super().encode(x, sample, generator)
        mu, logvar = self.bottleneck.compress(self._gen_clip(x, {}))
        return self._as_grid(self.bottleneck.sample(mu, logvar, generator) if sample else mu)

    def sem_input(self, z: Tensor) -> Tensor:
        """HYDRA-XTok's Sem-ViT reads the GSB reconstruction of standardised latents (the unified model's z)."""
        return self.bottleneck.reconstruct(self.standardise(z))

    def sem_latents(self, z: Tensor, attention: Optional[str] = None) -> Tensor:
        """Sem-ViT from standardised latents z (B, F, h, w, c) -> s (B, F, h, w, D): the unified
        model's entry (clean or noised latent frames)."""
        h_prime = self.bottleneck.reconstruct(z.flatten(2, 3))
        return self._as_grid(self._sem_clip(h_prime, {}, attention))

    def semantic(self, x: Tensor) -> Tensor:
        """Semantic features through the posterior mean: images -> (B, N, D); clips -> (B, 1 + T/4, h, w, D)."""
        if x.dim() != 5:
            check_image_size(x, self.cfg)
            return self.semantic(x[:, :, None])[:, 0].flatten(1, 2)
        return self.sem_latents(self.standardise(self.encode(x)))

    def edit_features(self, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Source-target interaction on images (B, 3, H, W): latents z (B, 2, N, c) = [z_src; z_tgt],
        each from the image path alone (no cross-frame attention in Gen-ViT), and semantic features
        s (B, 2, N, D) from Sem-ViT over both with the tubelet mask (s_src sees z_src only)."""
        z = torch.stack([self.encode(source), self.encode(target)], dim=1)
        return z, self._sem_clip(self.sem_input(z), {}, "tubelet")

    def decompress(self, s: Tensor) -> Tensor:
        """Sem-ViT features of the compressed frames (B, F, h, w, D) -> per frame (B, 4F, h, w, D)."""
        return self._as_grid(self.decompressor(s.flatten(2, 3)))

    @torch.no_grad()
    def image_teacher_features(self, images: Tensor) -> Tensor:
        """The image teacher's last-block patch tokens (B, N, D)."""
        check_image_size(images, self.cfg)
        return self.teacher.forward_features(self.normalise(images))[:, self.teacher.num_prefix_tokens :]

    # ------------------------------------------------------------------ decoder

    def _frame_latents(self, z: Tensor) -> Tensor:
        """Latents (B, 1 + k, N, c) -> one per frame (B, 1 + 4k, N, c): the anchor's own, then the
        latent Decompressor's."""
        if z.shape[1] == 1:
            return z
        return torch.cat([z[:, :1], self.latent_decompressor(z[:, 1:])], dim=1)

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """z (B, N, c) -> images (B, 3, H, W), as HYDRA-TOK; z (B, 1 + k, h, w, c) -> clip
        (B, 3, 1 + 4k, H, W). In [-1, 1]; ``steps``, ``sampler``, ``generator`` for the flow decoder."""
        if z.dim() != 5:
            return super().decode(z, steps, sampler, generator)
        expected = (*self.grid, self.cfg.latent_dim)
        if z.shape[2:] != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"expected clip latents of shape (B, 1 + k, {shape}), got {tuple(z.shape)}")
        frames = self._frame_latents(z.flatten(2, 3))  # (B, 1 + 4k, N, c)
        images = super().decode(frames.flatten(0, 1), steps, sampler, generator)
        return images.unflatten(0, frames.shape[:2]).transpose(1, 2)

    # ------------------------------------------------------------------ training

    def _distillation(self, frames: Tensor, s: Tensor) -> dict[str, Tensor]:
        """frames (B, 1 + T, 3, H, W), s (B, F, N, D) -> loss_distill (anchor vs the image teacher)
        and loss_distill_video (decompressed s_{1:} vs the video teacher; 0 for images)."""
        losses = {"loss_distill": cosine_distance(s[:, 0], self.image_teacher_features(frames[:, 0]))}
        if frames.shape[1] == 1:
            losses["loss_distill_video"] = s.new_zeros(())
        else:
            with torch.no_grad():
                target = self.video_teacher(frames[:, 1:].transpose(1, 2))  # (B, T, N, D)
            losses["loss_distill_video"] = cosine_distance(self.decompressor(s[:, 1:]), target)
        return losses

    def forward(self, x: Tensor, stage: int = 1, generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """Every loss term of ``stage`` on images (B, 3, H, W) or clips (B, 3, 1 + T, H, W), and
        ``loss``, their weighted total (weights from the configs).

        Stage 1: loss_l1 (loss_flow with the flow decoder), loss_lpips, loss_kl, loss_cons,
        loss_distill, loss_distill_video. Stage 2: loss_l1 (loss_flow), loss_lpips, loss_gan, and
        ``loss_disc`` (not part of ``loss``, reaching only the discriminator). Stage 3: loss_cons,
        loss_distill, loss_distill_video. loss_lpips is absent when lambda_lpips is 0.
        """
        cfg = self.cfg
        clip = x if x.dim() == 5 else x[:, :, None]
        check_clip(clip, cfg)
        frames = clip.transpose(1, 2)  # (B, 1 + T, 3, H, W)
        weights = {"loss_flow": 1.0, "loss_l1": cfg.lambda_l1, "loss_lpips": cfg.lambda_lpips, "loss_kl": cfg.lambda_kl,
                   "loss_cons": cfg.lambda_cons, "loss_distill": cfg.lambda_distill,
                   "loss_distill_video": self.xcfg.lambda_distill_video, "loss_gan": cfg.lambda_gan}
        if stage == 1:
            h = self._gen_clip(clip, {})
            mu, logvar = self.bottleneck.compress(h)
            z = self.bottleneck.sample(mu, logvar, generator)
            h_prime = self.sem_input(z)
            losses, _ = self._decoder_losses(frames.flatten(0, 1), self._frame_latents(z).flatten(0, 1), generator)
            losses["loss_kl"] = kl_loss(mu, logvar)
            losses["loss_cons"] = consistency_loss(h_prime, h, cfg.cons_stop_grad)
            losses.update(self._distillation(frames, self._sem_clip(h_prime, {})))
        elif stage == 2:
            with torch.no_grad():
                z = self.bottleneck.compress(self._gen_clip(clip, {}))[0]  # the frozen encoder's posterior mean
            losses, x1_hat = self._decoder_losses(frames.flatten(0, 1), self._frame_latents(z).flatten(0, 1), generator)
            losses["loss_gan"] = hinge_g_loss(self._judge_frozen(x1_hat))
        elif stage == 3:
            with torch.no_grad():
                h = self._gen_clip(clip, {})
                mu = self.bottleneck.compress(h)[0]
            h_prime = self.sem_input(mu)
            losses = {"loss_cons": consistency_loss(h_prime, h)}
            losses.update(self._distillation(frames, self._sem_clip(h_prime, {})))
        else:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        if stage == 2:
            pixels = frames.flatten(0, 1)
            losses["loss_disc"] = hinge_d_loss(self.discriminator(pixels), self.discriminator(x1_hat.detach()))
        return losses
