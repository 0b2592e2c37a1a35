"""HYDRA-XTok encode latency of a 17-frame clip (the paper's Table 1 latency column): full, causal
and tubelet attention, each with single (4x at the input) and hierarchical (2x + 2x) temporal
compression, as ratios against full attention with single compression, all in one run."""

from __future__ import annotations

import statistics

import torch

from hydra_umm.bench import Figure, timeit
from hydra_umm.config import load_config
from hydra_umm.models.hydra_xtok import HydraXTok

FRAMES = 17
VARIANTS = [(a, c) for a in ("full", "causal", "tubelet") for c in ("single", "hier")]


@torch.inference_mode()
def encode_latencies(preset: str, overrides: list[str], label: str, rounds: int) -> list[Figure]:
    """Median encode seconds of each variant over ``rounds`` rounds that time every variant once in
    turn (after one untimed call each), so that a busy machine slows all of them alike."""
    encoders = {}
    for attention, compression in VARIANTS:
        variant = [f"xtok.attention={attention}", f"xtok.temporal_compression={compression}"]
        cfg = load_config(preset, [*overrides, *variant])
        torch.manual_seed(0)
        tok = HydraXTok(cfg.tokenizer, cfg.xtok).eval()
        size = cfg.tokenizer.image_size
        clip = torch.rand(1, 3, FRAMES, size, size) * 2 - 1
        encoders[attention, compression] = lambda tok=tok, clip=clip: tok.encode(clip)
        encoders[attention, compression]()
    times = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant, encode in encoders.items():
            times[variant].append(timeit(encode, iters=1, warmup=0))
    seconds = {variant: statistics.median(t) for variant, t in times.items()}
    reference = seconds["full", "single"]
    return [
        Figure(f"xtok encode, {FRAMES} frames, {attention} + {compression} ({label})", s * 1e3, "ms",
               f"full + single, same run ({label})", reference * 1e3)
        for (attention, compression), s in seconds.items()
    ]


def run(include_paper: bool) -> list[Figure]:
    # the preset's 64 px (64 tokens a frame) and 128 px (256 a frame), where attention weighs more;
    # the paper's 448 px ViT-300M on 17 frames is far beyond a CPU run
    figures = encode_latencies("xtok-tiny", [], "xtok-tiny, 64 px", rounds=7)
    figures += encode_latencies("xtok-tiny", ["tokenizer.image_size=128"], "xtok-tiny, 128 px", rounds=5)
    return figures
