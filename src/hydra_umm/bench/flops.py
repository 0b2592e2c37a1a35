"""Analytic FLOPs of a training step, per component, and model FLOP utilisation (MFU).

What is counted: the matrix multiplies of the forward pass -- linear layers, the patch-embedding
convolution, and attention (Q K^T and A V over the full key length, masked or not) -- at 2 FLOPs
per multiply-add. Norms, activations, softmax, embedding look-ups, losses and the optimiser are not
counted; neither is LPIPS' VGG16 (a frozen loss network, not part of the model).

A training step costs a multiple of a component's forward FLOPs (the usual 3x rule):

    3x  trained:             forward, gradient of the input, gradient of the weights
    2x  frozen, on the path: forward and the gradient of its input (e.g. the LLM in HYDRA stage I);
                             attention has no weights and needs the gradients of both its operands,
                             so it still costs 3x
    1x  without gradient:    forward only (the teacher, HYDRA's Gen-ViT and GSB compressor)

``flop_counter()`` is the measured counterpart (``torch.utils.flop_counter``) the tests check
these numbers against, component by component, on the tiny preset.

MFU = achieved FLOP/s / the device's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`, or a given peak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils import flop_counter as torch_flop_counter

from hydra_umm.config import Config, LLMConfig, TokenizerConfig

TRAINED, GRAD_THROUGH, NO_GRAD = 3, 2, 1
FREQ_DIM = 256  # sinusoidal features of TimestepEmbedder

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets. Each entry:
# the markers that must all occur in torch.cuda.get_device_name(), checked in this order.
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], str, float], ...] = (
    (("GH200",), "GH200", 989.4),
    (("H200", "NVL"), "H200 NVL", 835.5),
    (("H200",), "H200", 989.4),
    (("H100", "PCIe"), "H100 PCIe", 756.5),
    (("H100", "NVL"), "H100 NVL", 835.5),
    (("H100",), "H100 SXM", 989.4),
    (("A100",), "A100", 312.0),
    (("L40S",), "L40S", 362.05),
    (("L40",), "L40", 181.05),
    (("L4",), "L4", 121.0),
    (("A10",), "A10", 125.0),
)


# ------------------------------------------------------------------------------- building blocks


def linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def attention(sequences: int, length: int, width: int, keys: Optional[int] = None) -> int:
    """Q K^T and A V of ``sequences`` sequences: ``length`` queries over ``keys`` (default: the same) keys."""
    return 2 * 2 * sequences * length * (length if keys is None else keys) * width


def transformer_block(sequences: int, length: int, width: int, mlp_hidden: int) -> int:
    """qkv, attention, output projection and a two-layer MLP (a timm ViT block)."""
    tokens = sequences * length
    return (linear(tokens, width, 3 * width) + attention(sequences, length, width) + linear(tokens, width, width)
            + 2 * linear(tokens, width, mlp_hidden))


def timestep_embedder(batch: int, width: int) -> int:
    return linear(batch, FREQ_DIM, width) + linear(batch, width, width)


def adaln_block(batch: int, length: int, width: int, mlp_ratio: float = 4.0) -> int:
    """A transformer block plus its per-sample shift/scale/gate regressor (AdaLNZeroBlock)."""
    return transformer_block(batch, length, width, int(width * mlp_ratio)) + linear(batch, width, 6 * width)


def adaln_final(batch: int, length: int, width: int, out_dim: int) -> int:
    return linear(batch, width, 2 * width) + linear(batch * length, width, out_dim)


# ---------------------------------------------------------------------------------- components


def _grid_tokens(cfg: TokenizerConfig) -> int:
    return (cfg.image_size // cfg.patch_size) ** 2


def _vit_blocks(cfg: TokenizerConfig, images: int, blocks: int) -> int:
    """``blocks`` InternViT blocks over the patch tokens and the class token."""
    return blocks * transformer_block(images, _grid_tokens(cfg) + 1, cfg.width, int(cfg.width * cfg.mlp_ratio))


def patch_embed(cfg: TokenizerConfig, images: int) -> int:
    return linear(images * _grid_tokens(cfg), 3 * cfg.patch_size**2, cfg.width)


def gen_vit(cfg: TokenizerConfig, images: int) -> int:
    """Patch embedding and blocks [0, k)."""
    return patch_embed(cfg, images) + _vit_blocks(cfg, images, cfg.gen_depth)


def sem_vit(cfg: TokenizerConfig, images: int, blocks: Optional[int] = None) -> int:
    """The first ``blocks`` (default: all depth - k) of Sem-ViT's blocks."""
    return _vit_blocks(cfg, images, cfg.depth - cfg.gen_depth if blocks is None else blocks)


def teacher(cfg: TokenizerConfig, images: int) -> int:
    """The teacher up to the deepest distilled layer."""
    return patch_embed(cfg, images) + _vit_blocks(cfg, images, max(cfg.distill_layers) + 1)


def gsb_compress(cfg: TokenizerConfig, images: int) -> int:
    return linear(images * _grid_tokens(cfg), cfg.width, 2 * cfg.latent_dim)


def gsb_reconstruct(cfg: TokenizerConfig, images: int) -> int:
    return linear(images * _grid_tokens(cfg), cfg.latent_dim, cfg.width)


def pixel_decoder(cfg: TokenizerConfig, images: int) -> int:
    """One pass of the configured decoder: a velocity evaluation of the pixel flow decoder, or the
    deterministic ViT decoder."""
    n, w, patch = _grid_tokens(cfg), cfg.decoder_width, 3 * cfg.patch_size**2
    if cfg.decoder == "vit":
        blocks = cfg.decoder_depth * transformer_block(images, n, w, 4 * w)
        return linear(images * n, cfg.latent_dim, w) + blocks + linear(images * n, w, patch)
    embed = linear(images * n, patch, w) + linear(images * n, cfg.latent_dim, w) + timestep_embedder(images, w)
    return embed + cfg.decoder_depth * adaln_block(images, n, w) + adaln_final(images, n, w, patch)


def projector(cfg: Config, images: int) -> int:
    """HYDRA's projector (Sem-ViT width -> LLM width, two layers) and the visual timestep embedding."""
    tokens, w = images * _grid_tokens(cfg.tokenizer), cfg.llm.hidden_size
    return linear(tokens, cfg.tokenizer.width, w) + linear(tokens, w, w) + timestep_embedder(images, w)


def vision_head(cfg: Config, blocks: int) -> int:
    """The vision head on ``blocks`` generated image blocks."""
    umm, n = cfg.umm, _grid_tokens(cfg.tokenizer)
    w = umm.head_width
    stem = linear(blocks * n, cfg.llm.hidden_size, w) + timestep_embedder(blocks, w)
    return stem + umm.head_depth * adaln_block(blocks, n, w) + adaln_final(blocks, n, w, cfg.tokenizer.latent_dim)


def llm(cfg: LLMConfig, sequences: int, length: int, targets: int, vocab: Optional[int] = None) -> int:
    """The decoder layers over ``sequences`` x ``length`` positions (grouped-query attention) and the
    LM head on the ``targets`` positions that have a next-token target. ``vocab``: the LM head's
    rows (default cfg.vocab_size; a tiny model is resized to its tokenizer)."""
    h, tokens = cfg.hidden_size, sequences * length
    kv = h // cfg.num_heads * cfg.num_kv_heads
    projections = 2 * linear(tokens, h, h) + 2 * linear(tokens, h, kv) + 3 * linear(tokens, h, cfg.intermediate_size)
    head = linear(targets, h, vocab or cfg.vocab_size)
    return cfg.num_layers * projections + llm_attention(cfg, sequences, length) + head


def llm_attention(cfg: LLMConfig, sequences: int, length: int) -> int:
    """The attention part of :func:`llm` (grouped-query attention computes as many scores as full)."""
    return cfg.num_layers * attention(sequences, length, cfg.hidden_size)


# ----------------------------------------------------------------------------- training steps


@dataclass(frozen=True)
class Cost:
    """A component's forward FLOPs and what one training step costs: forward x multiplier, except
    that the ``attention`` part of ``forward`` costs 3x whenever a gradient passes through."""

    forward: int
    multiplier: int
    attention: int = 0  # filled in where the component can be frozen on the gradient's path

    @property
    def step(self) -> int:
        through = self.multiplier > NO_GRAD
        return self.forward * self.multiplier + (TRAINED - self.multiplier) * self.attention * through


def tokenizer_step(cfg: TokenizerConfig, images: int) -> dict[str, Cost]:
    """HYDRA-TOK stage 1 on ``images`` images: everything trains; the teacher runs without gradient.
    Sem-ViT blocks after the deepest distilled layer reach no loss and get no backward pass."""
    sem_trained = max(cfg.distill_layers) + 1 - cfg.gen_depth
    sem_tail = cfg.depth - cfg.gen_depth - max(sem_trained, 0)
    return {
        "gen_vit": Cost(gen_vit(cfg, images), TRAINED),
        "gsb": Cost(gsb_compress(cfg, images) + gsb_reconstruct(cfg, images), TRAINED),
        "sem_vit": Cost(sem_vit(cfg, images, max(sem_trained, 0)), TRAINED),
        "sem_vit_untrained_tail": Cost(sem_vit(cfg, images, sem_tail), NO_GRAD),
        "teacher": Cost(teacher(cfg, images), NO_GRAD),
        "pixel_decoder": Cost(pixel_decoder(cfg, images), TRAINED),
    }


def hydra_step(
    cfg: Config, sequences: int, length: int, images: int, generated: int, targets: int,
    stage: str = "II", vocab: Optional[int] = None,
) -> dict[str, Cost]:
    """A HYDRA step on ``sequences`` laid-out rows of ``length`` positions holding ``images`` image
    blocks (``generated`` of them noised, with a flow loss) and ``targets`` next-token targets.
    Gen-ViT and the GSB compressor run without gradient; in stage I the LLM is frozen but carries
    the gradient to Sem-ViT."""
    if stage not in ("I", "II", "III"):
        raise ValueError(f"HYDRA has stages I, II and III; got stage={stage!r}")
    tok = cfg.tokenizer
    return {
        "gen_vit": Cost(gen_vit(tok, images) + gsb_compress(tok, images), NO_GRAD),
        "sem_vit": Cost(gsb_reconstruct(tok, images) + sem_vit(tok, images), TRAINED),
        "projector": Cost(projector(cfg, images), TRAINED),
        "llm": Cost(llm(cfg.llm, sequences, length, targets, vocab), GRAD_THROUGH if stage == "I" else TRAINED,
                    llm_attention(cfg.llm, sequences, length)),
        "vision_head": Cost(vision_head(cfg, generated), TRAINED),
    }


def total(costs: dict[str, Cost]) -> int:
    """FLOPs of the whole training step."""
    return sum(c.step for c in costs.values())


# ------------------------------------------------------------------------------------ measured


def _sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return torch_flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return torch_flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> torch_flop_counter.FlopCounterMode:
    """``torch.utils.flop_counter.FlopCounterMode`` (per module, no printout) that also counts the
    CPU flash-attention kernel, which torch's own table leaves out."""
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
    }
    return torch_flop_counter.FlopCounterMode(display=False, depth=None, custom_mapping=cpu_attention)


# ------------------------------------------------------------------------------------------ MFU


def peak_bf16_tflops(device_name: str) -> Optional[tuple[str, float]]:
    """(the table's name, dense bf16 TFLOP/s) of a CUDA device name, or None if it is not known."""
    for markers, name, peak in PEAK_BF16_TFLOPS:
        if all(m in device_name for m in markers):
            return name, peak
    return None


def device_peak(device: torch.device, override: Optional[float] = None) -> tuple[Optional[float], str]:
    """The peak bf16 TFLOP/s MFU is measured against, and its description. ``override`` (e.g.
    ``--peak-tflops``) wins; a CUDA device is looked up in the table; a CPU has no peak unless given."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"the peak must be a positive TFLOP/s figure, got {override}")
        return override, f"given peak {override:g} TFLOP/s"
    if device.type != "cuda":
        return None, "no peak for a CPU: pass --peak-tflops for an MFU"
    name = torch.cuda.get_device_name(device)
    known = peak_bf16_tflops(name)
    if known is None:
        return None, f"{name} is not in the table of peaks: pass --peak-tflops for an MFU"
    return known[1], f"{known[0]} dense bf16 peak {known[1]:g} TFLOP/s"
