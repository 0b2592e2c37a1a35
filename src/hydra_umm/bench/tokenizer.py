"""HYDRA-TOK throughput: encode (images -> z) and decode (z -> images, a few ODE steps of the pixel
decoder), each beside one forward of a plain timm ViT of the encoder's sizes (for the paper preset
exactly ``vit_intern300m_patch14_448``) measured in the same run: decode's ratio is the cost of its
steps in encoder forwards."""

from __future__ import annotations

import torch

from hydra_umm.bench import Figure, timeit
from hydra_umm.config import TokenizerConfig, load_config
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.models.vit import TIMM_ARCH, build_vit


@torch.inference_mode()
def _throughput(
    preset: str, cfg: TokenizerConfig, batch: int, decode_steps: int, iters: int, warmup: int
) -> list[Figure]:
    torch.manual_seed(0)
    tok = HydraTok(cfg).eval()
    reference = build_vit(cfg).eval()  # timm's model with this preset's sizes (the paper's: exactly)
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size) * 2 - 1
    z = tok.encode(images)
    seconds = {
        "reference": timeit(lambda: reference(images), iters=iters, warmup=warmup),
        "encode": timeit(lambda: tok.encode(images), iters=iters, warmup=warmup),
        "decode": timeit(lambda: tok.decode(z, steps=decode_steps), iters=iters, warmup=warmup),
    }
    arch = TIMM_ARCH if preset == "paper" else "ViT of the encoder's sizes"
    ref_name = f"timm {arch} forward, {cfg.image_size} px, same batch"
    ref_rate = batch / seconds["reference"]
    size = f"{preset}, {cfg.image_size} px, batch {batch}"
    return [
        Figure(f"tokenizer encode ({size})", batch / seconds["encode"], "images/s", ref_name, ref_rate),
        Figure(f"tokenizer decode ({size}, {decode_steps} steps)", batch / seconds["decode"], "images/s", ref_name, ref_rate),
    ]


def run(include_paper: bool) -> list[Figure]:
    # LPIPS is only built for training; the benchmark never triggers it
    figures = _throughput("tiny", load_config("tiny").tokenizer, batch=8, decode_steps=10, iters=5, warmup=1)
    if include_paper:
        # on a 2-core CPU: a single timed call each, no warm-up, keeps this part short
        paper = load_config("paper").tokenizer
        figures += _throughput("paper", paper, batch=1, decode_steps=2, iters=1, warmup=0)
    return figures
