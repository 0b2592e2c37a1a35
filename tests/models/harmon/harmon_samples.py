"""Samples of coloured squares and a tiny HarmonModel (32 px, 4x4 latent grid, 4 buffer tokens) for the Harmon tests."""

import torch

from hydra_umm.config import load_config
from hydra_umm.models.harmon import HarmonModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}
QUESTION = "what colour is the square?"
TEXTS = [f"a {c} square" for c in COLOURS] + [QUESTION, "a square on black", *COLOURS]


def square(colour: str, size: int = 32) -> torch.Tensor:
    """A coloured square on black, (3, size, size) in [-1, 1]."""
    image = -torch.ones(3, size, size)
    image[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = torch.tensor(COLOURS[colour])[:, None, None]
    return image


def gen(colour: str) -> dict:
    return {"kind": "gen", "image": square(colour), "prompt": f"a {colour} square", "target": ""}


def und(colour: str) -> dict:
    return {"kind": "und", "image": square(colour), "prompt": QUESTION, "target": colour}


def build_model(*overrides: str) -> HarmonModel:
    torch.manual_seed(0)
    cfg = load_config("harmon-tiny", ["harmon.image_size=32", "harmon.sampling_steps=20", *overrides])
    return HarmonModel(cfg, train_text_tokenizer(TEXTS * 4, cfg.llm.vocab_size))
