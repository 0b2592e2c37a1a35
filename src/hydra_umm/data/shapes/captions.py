"""Captions: a scene described in varied natural templates ("two red circles above a blue square")."""

from __future__ import annotations

from typing import Optional

import numpy as np

from hydra_umm.data.shapes.prompts import NUMBERS, plural, with_article
from hydra_umm.data.shapes.world import Scene, ShapeObject, clear_relation

LIST_TEMPLATES = (
    "{L}",
    "a photo of {L}",
    "an image of {L}",
    "a picture showing {L}",
    "{L} on a grey background",
    "there {be} {L}",
    "a simple drawing of {L}",
)
RELATION_WORDS = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
                  "above": ("above", "over"), "below": ("below", "under")}


# Captions that name shapes without their colours, as GenEval's colour-free prompts do ("a photo of
# two circles"): without them a text-to-image model never sees the prompts of four of its six categories.
COLORLESS_FRACTION = 1 / 3


def noun_phrase(count: int, color: Optional[str], shape: str, size: Optional[str] = None) -> str:
    """``"a red circle"``, ``"a small red circle"``, ``"three blue stars"``, ``"two circles"`` (no colour)."""
    adjectives = " ".join(a for a in (size, color) if a)
    if not adjectives:
        return with_article(shape) if count == 1 else f"{NUMBERS[count]} {plural(shape)}"
    if count == 1:
        return with_article(f"{adjectives} {shape}")
    return f"{NUMBERS[count]} {adjectives} {plural(shape)}"


def join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _groups(scene: Scene, with_size: bool, with_color: bool = True) -> list[tuple[tuple, list[ShapeObject]]]:
    """Objects grouped by ([colour, ]shape[, size]), groups ordered left to right."""
    groups: dict[tuple, list[ShapeObject]] = {}
    for o in sorted(scene.objects, key=lambda o: o.cx):
        groups.setdefault((o.color if with_color else None, o.shape, o.size if with_size else None), []).append(o)
    return list(groups.items())


def group_relation(a: list[ShapeObject], b: list[ShapeObject]) -> Optional[str]:
    """The relation every object of ``a`` clearly has to every object of ``b``, if there is one."""
    rels = {clear_relation(x, y) for x in a for y in b}
    return rels.pop() if len(rels) == 1 and None not in rels else None


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random natural caption of the scene (sizes mentioned in about a third of them, colours left
    out in :data:`COLORLESS_FRACTION`: then the counts are per shape)."""
    if not scene.objects:
        raise ValueError("cannot caption an empty scene")
    with_size = bool(rng.random() < 1 / 3)
    groups = _groups(scene, with_size, with_color=bool(rng.random() >= COLORLESS_FRACTION))
    phrases = [noun_phrase(len(objs), *key) for key, objs in groups]
    if len(groups) == 2 and rng.random() < 0.5:
        rel = group_relation(groups[0][1], groups[1][1])
        if rel is not None:
            words = RELATION_WORDS[rel][int(rng.integers(2))]
            return f"{phrases[0]} {words} {phrases[1]}"
    template = LIST_TEMPLATES[int(rng.integers(len(LIST_TEMPLATES)))]
    be = "is" if len(scene.objects) == 1 or (len(groups) > 1 and len(groups[0][1]) == 1) else "are"
    return template.format(L=join(phrases), be=be)

