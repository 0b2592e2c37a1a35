"""Coloured squares on black with their captions and questions (a module name no other test folder
uses): the samples the HydraModel and HarmonModel tests train and check on."""

import torch

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
