"""Harmon, the shared-MAR-encoder baseline (Wu et al. 2025; DESIGN section 5), on HYDRA's LLM wrapper.

    image -> KL autoencoder (frozen) -> latent tokens x (M, N, c), scaled posterior mode
    x, mask -> MAR encoder (masked tokens dropped, S buffer tokens) -> x_enc (M, S + N_vis, W_enc)
    x_enc -> proj_in (Linear, SiLU, Linear) -> visual tokens: the N_vis image tokens, then the S buffers
    LLM (causal, image tokens included) -> hidden states h of the visual tokens
    x_enc + proj_out(h) -> MAR decoder (mask tokens in the masked slots) -> z (M, N, W_dec)
    z at the masked slots -> diffusion head -> loss_diff

Understanding shows every token and reads the LM head (loss_ntp on the target text; the gradient
reaching the visual tokens is scaled by ``und_grad_scale``). Generation masks a ratio drawn once per
batch (N(1, 0.25) truncated to [0.7, 1]) in a random order per sample. Sample kinds and layouts,
as in :class:`~hydra_umm.models.hydra.HydraModel` but with causal image tokens:

    "text": prompt, target, eos
    "und":  <vs> image (N + S) <ve> prompt, target, eos
    "gen":  prompt <vs> image (N_vis + S)              (caption -> "" with probability caption_dropout)

    loss = loss_ntp + loss_diff
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from hydra_umm.config import Config
from hydra_umm.models.harmon.diffusion_head import DiffusionHead
from hydra_umm.models.harmon.mar import MARDecoder, MAREncoder, mask_by_order, random_orders, training_mask_ratio
from hydra_umm.models.harmon.vae import AutoencoderKL
from hydra_umm.models.hydra import HydraModel, _rows, load_unified
from hydra_umm.models.llm import Image, Layout, Segment, build_language_model, layout
from hydra_umm.models.text_tokenizer import (
    EOS,
    IMAGE_PAD,
    PAD,
    SPECIAL_TOKENS,
    VISION_END,
    VISION_START,
)

MODEL_TYPE_FILE = "model_type.json"  # {"model_type": "harmon"}: tells a Harmon directory from a HYDRA one


@dataclass
class CausalLayout(Layout):
    """A layout whose visual positions (``image``) form no image block: every ``block`` is 0, so the
    mixed mask of :mod:`hydra_umm.models.llm` is plain causal over them, as in Harmon's LLM."""

    image: Tensor = field(default=None)  # (B, L) bool

    @property
    def visual(self) -> Tensor:
        return self.image


def causal_layout(lay: Layout) -> CausalLayout:
    return CausalLayout(lay.input_ids, lay.labels, lay.valid, torch.zeros_like(lay.block), lay.position_ids,
                        image=lay.block > 0)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient scaled by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


@dataclass
class HarmonBatch:
    """A collated batch: the causal layout, one image per image block (layout order), which images are
    generation targets, and their token masks."""

    layout: CausalLayout
    images: Tensor  # (M, 3, H, W) in [-1, 1]
    generate: Tensor  # (M,) bool
    mask: Tensor  # (M_gen, N) bool, True = masked (predicted), the same count in every row


class HarmonModel(nn.Module):
    """KL autoencoder + MAR encoder/decoder + projectors + causal LM + diffusion head. ``text_tokenizer``
    carries HYDRA's special tokens. With ``llm_config`` the LM is built empty and the autoencoder is not
    read from ``cfg.harmon.vae_path``: the skeleton of :meth:`from_pretrained`."""

    def __init__(self, cfg: Config, text_tokenizer: PreTrainedTokenizerBase,
                 llm_config: PretrainedConfig | None = None):
        super().__init__()
        self.cfg, self.text_tokenizer = cfg, text_tokenizer
        missing = [t for t in SPECIAL_TOKENS if t not in text_tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the text tokenizer lacks HYDRA's special tokens {missing}; see add_special_tokens")
        special = text_tokenizer.convert_tokens_to_ids([PAD, EOS, VISION_START, VISION_END, IMAGE_PAD])
        self.ids = dict(zip(("pad", "eos", "vs", "ve", "image"), special))
        h = cfg.harmon
        self.vae = AutoencoderKL(h)
        if h.vae_path and llm_config is None:
            self.vae.load_weights(h.vae_path)
        self.vae.requires_grad_(False)
        self.llm = build_language_model(cfg.llm, llm_config)
        rows, tokens = self.llm.get_input_embeddings().num_embeddings, len(text_tokenizer)
        if tokens > rows or (llm_config is None and not cfg.llm.path and tokens != rows):
            self.llm.resize_token_embeddings(tokens)
        width = self.llm.config.hidden_size
        self.num_tokens = self.vae.grid ** 2  # N latent tokens per image
        self.buffer_size = h.buffer_size  # S
        self.num_image_tokens = self.num_tokens + self.buffer_size  # an understanding image block
        self.encoder = MAREncoder(h.latent_dim, self.num_tokens, h.buffer_size, h.encoder_width, h.encoder_depth,
                                  h.encoder_heads, h.mlp_ratio, h.dropout)
        self.proj_in = nn.Sequential(nn.Linear(h.encoder_width, width), nn.SiLU(), nn.Linear(width, width))
        self.proj_out = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, h.encoder_width))
        self.decoder = MARDecoder(h.encoder_width, self.num_tokens, h.buffer_size, h.decoder_width, h.decoder_depth,
                                  h.decoder_heads, h.mlp_ratio, h.dropout)
        self.head = DiffusionHead(h.latent_dim, h.decoder_width, h.head_width, h.head_depth, h.diffusion_steps)

    def train(self, mode: bool = True) -> "HarmonModel":
        super().train(mode)
        self.vae.eval()  # frozen, always in inference mode
        return self

    def components(self) -> dict[str, list[nn.Parameter]]:
        """Trainable components, named as in :class:`hydra_umm.train.config.LearningRates`: the MAR
        encoder ("encoder") and decoder ("decoder"), both projectors, the diffusion head ("vision_head")
        and the LLM. The autoencoder belongs to none and is always frozen."""
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": list(self.decoder.parameters()),
            "projector": list(self.proj_in.parameters()) + list(self.proj_out.parameters()),
            "vision_head": list(self.head.parameters()),
            "llm": list(self.llm.parameters()),
        }

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {name: [p for p in ps if p.requires_grad] for name, ps in self.components().items()}

    @property
    def device(self) -> torch.device:
        return self.proj_in[0].weight.device

    # --------------------------------------------------------------------------- sequence building
    # Text segments, the LM plumbing and the cached-sequence interface are HydraModel's own.

    _ids = HydraModel._ids
    text_segments = HydraModel.text_segments
    understanding_segments = HydraModel.understanding_segments  # <vs> image (N + S) <ve> prompt [target eos]
    generation_prefix = HydraModel.generation_prefix  # prompt <vs>
    sample_sequences = HydraModel.sample_sequences
    embed = HydraModel.embed
    hidden_states = HydraModel.hidden_states
    sequence_hidden_states = HydraModel.sequence_hidden_states
    next_token_loss = HydraModel.next_token_loss

    def layout(self, samples: list[list[Segment]]) -> CausalLayout:
        return causal_layout(layout(samples, pad_id=self.ids["pad"], image_id=self.ids["image"]))

    def collate(self, samples: list[dict[str, Any]], caption_dropout: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> HarmonBatch:
        """Samples ``{"kind": "text"|"und"|"gen", "image": (3, H, W) in [-1, 1] or None, "prompt",
        "target"}`` -> :class:`HarmonBatch`. Draws the batch's mask ratio and each generation sample's
        order; a caption becomes "" with probability ``caption_dropout`` (default ``harmon.caption_dropout``)."""
        h, N, S = self.cfg.harmon, self.num_tokens, self.buffer_size
        p_drop = h.caption_dropout if caption_dropout is None else caption_dropout
        num_gen = sum(s.get("kind") == "gen" for s in samples)
        ratio = training_mask_ratio(h.mask_ratio_min, h.mask_ratio_std, generator) if num_gen else 1.0
        masked = math.ceil(N * ratio)
        sequences, blocks = self.sample_sequences(samples, lambda frames: [Image(N - masked + S)], h.image_size, p_drop,
                                                  generator)
        images = torch.stack([b.pixels for b in blocks]) if blocks else torch.zeros(0, 3, h.image_size, h.image_size)
        generate = torch.tensor([b.generated for b in blocks], dtype=torch.bool)
        return HarmonBatch(
            layout=self.layout(sequences), images=images, generate=generate,
            mask=mask_by_order(masked, random_orders(num_gen, N, generator)),
        )

    # ------------------------------------------------------------------------------- visual path

    @torch.no_grad()
    def latents(self, images: Tensor) -> Tensor:
        """(M, 3, H, W) in [-1, 1] -> latent tokens (M, N, c): the autoencoder's scaled posterior mode."""
        return self.vae.encode(images)

    def encode(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Latent tokens (M, N, c), mask (M, N) -> MAR encoder features x_enc (M, S + N_vis, W_enc) and
        the visual tokens of the LLM (M, N_vis + S, width): image tokens first, the buffers last."""
        x_enc = self.encoder(x, mask)
        z = self.proj_in(x_enc)
        return x_enc, torch.cat([z[:, self.buffer_size:], z[:, : self.buffer_size]], dim=1)

    def visual_tokens(self, x: Tensor, t: Optional[Tensor] = None) -> Tensor:
        """Understanding input: clean latents (M, N, c), every token visible -> (M, N + S, width).
        ``t`` keeps HydraModel's signature; Harmon reads clean latents only, so it must be all ones."""
        if t is not None and not bool((t == 1).all()):
            raise ValueError("Harmon's visual tokens are of clean latents only (t = 1)")
        mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.encode(x, mask)[1]

    def decode_tokens(self, x_enc: Tensor, hidden: Tensor, mask: Tensor) -> Tensor:
        """Encoder features, the LLM's hidden states of the visual tokens (M, N_vis + S, width) and the
        mask -> the diffusion head's conditions (M, N, W_dec): x_enc + proj_out(h) into the MAR decoder."""
        hidden = torch.cat([hidden[:, -self.buffer_size:], hidden[:, : -self.buffer_size]], dim=1)  # buffers first
        return self.decoder(x_enc + self.proj_out(hidden), mask)

    # ---------------------------------------------------------------------------------- losses

    def forward(self, batch: HarmonBatch | Mapping[str, Any],
                generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """Losses: loss_ntp (target text), loss_diff (masked tokens of generation images) and loss.
        ``batch`` is a :class:`HarmonBatch` or a column dict (see ``HydraModel.forward``)."""
        if not isinstance(batch, HarmonBatch):
            batch = self.collate(_rows(batch), caption_dropout=None if self.training else 0.0, generator=generator)
        lay, device, N = batch.layout, self.device, self.num_tokens
        gen = batch.generate.to(device)
        x = self.latents(batch.images.to(device)) if len(gen) else None
        # the understanding images (all visible) and the generation images (masked), each group encoded at once
        groups = []  # (rows, mask, x_enc, visual tokens)
        for rows, mask in ((~gen, None), (gen, batch.mask.to(device))):
            if rows.any():
                mask = torch.zeros(int(rows.sum()), N, dtype=torch.bool, device=device) if mask is None else mask
                x_enc, tokens = self.encode(x[rows], mask)
                if not mask.any():  # understanding: the caption loss reaches the visual path scaled
                    tokens = _ScaleGrad.apply(tokens, self.cfg.harmon.und_grad_scale)
                groups.append((rows.nonzero()[:, 0].tolist(), mask, x_enc, tokens))
        pieces: list[Tensor] = [torch.empty(0)] * len(gen)
        for rows, _, _, tokens in groups:
            for i, row_tokens in zip(rows, tokens):
                pieces[i] = row_tokens
        visual = torch.cat(pieces)[None] if pieces else None  # (1, all visual tokens in layout order, width)
        hidden = self.sequence_hidden_states(lay, visual)

        # Every term runs on every batch, weighted 0 when it has no samples, so that under DDP every
        # rank yields a gradient for every parameter (as HydraModel does for sharded training).
        loss_ntp = self.next_token_loss(hidden, lay)
        loss_diff = hidden.new_zeros(())
        if groups:
            per_image = hidden[lay.visual.to(device)].split([len(p) for p in pieces])
            for rows, mask, x_enc, _ in groups:
                generation = bool(mask.any())
                if generation or not gen.any():  # without generation images, understanding ones weighted 0
                    cond = self.decode_tokens(x_enc, torch.stack([per_image[i] for i in rows]), mask)
                    keep = mask if generation else mask.logical_not()
                    loss_diff = self.head(x[rows][keep].float(), cond[keep].float(), generator,
                                          self.cfg.harmon.diffusion_repeat) * float(generation)
        loss = loss_ntp + loss_diff
        return {"loss": loss, "loss_ntp": loss_ntp.detach(), "loss_diff": loss_diff.detach()}

    # ------------------------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json, model.safetensors, the text tokenizer, the LM's config under llm/ and the
        model_type.json that names the directory a Harmon one."""
        HydraModel.save_pretrained(self, directory)
        (Path(directory) / MODEL_TYPE_FILE).write_text(json.dumps({"model_type": "harmon"}))

    @staticmethod
    def is_pretrained(directory: str | Path) -> bool:
        """Whether ``directory`` was written by :meth:`save_pretrained`."""
        path = Path(directory) / MODEL_TYPE_FILE
        return path.is_file() and json.loads(path.read_text()).get("model_type") == "harmon"

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "HarmonModel":
        directory = Path(directory)
        if not cls.is_pretrained(directory) or not (directory / "model.safetensors").is_file():
            raise FileNotFoundError(f"{directory} is not a saved HarmonModel (no {MODEL_TYPE_FILE} naming harmon, "
                                    "or no model.safetensors); write one with save_pretrained")
        return load_unified(cls, directory)
