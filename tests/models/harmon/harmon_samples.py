"""A tiny HarmonModel (32 px, 4x4 latent grid, 4 buffer tokens) for the Harmon tests; the samples
they check it on come from ``square_samples``."""

import torch

from hydra_umm.config import load_config
from hydra_umm.models.harmon import HarmonModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer

from square_samples import TEXTS


def build_model(*overrides: str) -> HarmonModel:
    torch.manual_seed(0)
    cfg = load_config("harmon-tiny", ["harmon.image_size=32", "harmon.sampling_steps=20", *overrides])
    return HarmonModel(cfg, train_text_tokenizer(TEXTS * 4, cfg.llm.vocab_size))
