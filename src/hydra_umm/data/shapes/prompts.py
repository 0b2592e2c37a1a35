"""Generation prompts with GenEval-style metadata, and scenes that satisfy them.

The metadata has the field layout and meaning of GenEval's ``evaluation_metadata.jsonl``
(``prompts/create_prompts.py`` there), with shapes as the classes and our six colours::

    {"tag": "position", "include": [{"class": "square", "count": 1},
                                    {"class": "circle", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a circle left of a square"}

``position: [relation, i]`` means this clause's objects stand in ``relation`` to those of
``include[i]``; counting prompts exclude ``count + 1`` objects of the class.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping, Optional

import numpy as np
from PIL import Image

from hydra_umm.data.shapes.render import render
from hydra_umm.data.shapes.world import (COLORS, MAX_OBJECTS, RELATIONS, SHAPES, SIZES, Scene, ShapeObject,
                                         background, clear_relation, place)

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MAX_COUNT = 4


def with_article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def plural(noun: str) -> str:
    return f"{noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{noun}s"


def _pick(rng: np.random.Generator, items: Iterable, k: Optional[int] = None):
    items = list(items)
    if k is None:
        return items[int(rng.integers(len(items)))]
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _colors_for(shape: str, exclude_pairs: set) -> list[str]:
    return [c for c in COLORS if (c, shape) not in exclude_pairs]


def prompt_for(tag: str, rng: np.random.Generator, exclude_pairs: Iterable[tuple[str, str]] = ()) -> dict:
    """One random prompt of category ``tag``; colours never form an excluded (colour, shape) pair."""
    ex = set(exclude_pairs)
    if tag == "single_object":
        s = _pick(rng, SHAPES)
        return {"tag": tag, "include": [{"class": s, "count": 1}], "prompt": f"a photo of {with_article(s)}"}
    if tag == "two_object":
        a, b = _pick(rng, SHAPES, 2)
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}
    if tag == "counting":
        s, n = _pick(rng, SHAPES), int(rng.integers(2, MAX_COUNT + 1))
        return {"tag": tag, "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}],
                "prompt": f"a photo of {NUMBERS[n]} {plural(s)}"}
    if tag == "colors":
        s = _pick(rng, SHAPES)
        c = _pick(rng, _colors_for(s, ex))
        return {"tag": tag, "include": [{"class": s, "count": 1, "color": c}],
                "prompt": f"a photo of {with_article(c)} {s}"}
    if tag == "position":
        a, b = _pick(rng, SHAPES, 2)
        rel = _pick(rng, RELATIONS)
        return {"tag": tag, "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}"}
    if tag == "color_attr":
        a, b = _pick(rng, SHAPES, 2)
        ca = _pick(rng, _colors_for(a, ex))
        cb = _pick(rng, [c for c in _colors_for(b, ex) if c != ca])
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                "prompt": f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}"}
    raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def generate_prompts(rng: np.random.Generator, per_tag: int = 50,
                     exclude_pairs: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """GenEval's suite: every shape once as ``single_object``, then ``per_tag`` draws of each
    other category, duplicates removed (first occurrence kept, order preserved)."""
    if per_tag < 0:
        raise ValueError(f"per_tag must be >= 0, got {per_tag}")
    ex = tuple(exclude_pairs)
    samples = [{"tag": "single_object", "include": [{"class": s, "count": 1}], "prompt": f"a photo of {with_article(s)}"}
               for s in SHAPES]
    for tag in TAGS[1:]:
        samples += [prompt_for(tag, rng, ex) for _ in range(per_tag)]
    seen, unique = set(), []
    for s in samples:
        key = json.dumps(s, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def heldout_prompts(pairs: Iterable[tuple[str, str]], rng: np.random.Generator, per_pair: int = 4) -> list[dict]:
    """Prompts that each name a held-out (colour, shape) pair: its ``colors`` prompt and up to
    ``per_pair`` distinct ``color_attr`` prompts pairing it with a seen composition."""
    pairs, out = tuple(pairs), []
    for color, shape in pairs:
        out.append({"tag": "colors", "include": [{"class": shape, "count": 1, "color": color}],
                    "prompt": f"a photo of {with_article(color)} {shape}"})
        partners = [(c, s) for s in SHAPES if s != shape for c in COLORS if c != color and (c, s) not in pairs]
        for i in rng.choice(len(partners), size=min(per_pair, len(partners)), replace=False):
            oc, other = partners[i]
            out.append({"tag": "color_attr",
                        "include": [{"class": shape, "count": 1, "color": color}, {"class": other, "count": 1, "color": oc}],
                        "prompt": f"a photo of {with_article(color)} {shape} and {with_article(oc)} {other}"})
    return out


def scene_for_prompt(metadata: Mapping, rng: np.random.Generator, exclude_pairs: Iterable[tuple[str, str]] = (),
                     distractor_prob: float = 0.5, tries: int = 500) -> Scene:
    """A random scene that satisfies ``metadata``: the included objects (colour drawn when not
    given; sizes drawn), placed so every ``position`` clause holds with a wide margin, plus, with
    probability ``distractor_prob``, one object of a class the prompt does not name."""
    ex = set(exclude_pairs)
    include = list(metadata["include"])
    if not include:
        raise ValueError("metadata has no 'include' clause")
    named = {req["class"] for req in include} | {req["class"] for req in metadata.get("exclude", [])}
    for i, req in enumerate(include):
        if req["class"] not in SHAPES:
            raise ValueError(f"unknown class {req['class']!r}; expected one of {SHAPES}")
        if not isinstance(req.get("count"), int) or req["count"] < 1:
            raise ValueError(f"include[{i}] needs a positive integer 'count', got {req.get('count')!r}")
        if "position" in req and not (req["position"][0] in RELATIONS and 0 <= req["position"][1] < i):
            raise ValueError(f"include[{i}] position must be [relation in {RELATIONS}, index of an earlier clause], "
                             f"got {req['position']!r}")
        if "color" in req and req["color"] not in COLORS:
            raise ValueError(f"unknown colour {req['color']!r}; expected one of {tuple(COLORS)}")
    total = sum(req["count"] for req in include)
    if total > MAX_OBJECTS:
        raise ValueError(f"the prompt asks for {total} objects; the world holds at most {MAX_OBJECTS}")
    for _ in range(tries):
        groups: list[tuple[ShapeObject, ...]] = []
        placed: tuple[ShapeObject, ...] = ()
        for req in include:
            specs = [(req["class"], req.get("color") or _pick(rng, _colors_for(req["class"], ex)), _pick(rng, SIZES))
                     for _ in range(req["count"])]
            for _ in range(50):  # re-place this clause until its position clause holds
                group = place(rng, specs, placed=placed)
                if group is None or "position" not in req:
                    break
                rel, target = req["position"]
                if all(clear_relation(o, t) == rel for o in group for t in groups[target]):
                    break
                group = None
            if group is None:
                break
            groups.append(group)
            placed += group
        else:
            free = [s for s in SHAPES if s not in named]
            if free and len(placed) < MAX_OBJECTS and rng.random() < distractor_prob:
                s = _pick(rng, free)
                extra = place(rng, [(s, _pick(rng, _colors_for(s, ex)), _pick(rng, SIZES))], placed=placed)
                placed += extra or ()
            level, seed = background(rng)
            return Scene(placed, level, seed)
    raise ValueError(f"could not place a scene for {metadata.get('prompt', metadata)!r} in {tries} tries")


def render_prompt(metadata: Mapping, rng: np.random.Generator, size: int = 64,
                  exclude_pairs: Iterable[tuple[str, str]] = ()) -> tuple[Image.Image, Scene]:
    """An image that satisfies the prompt (ground truth for the scorer), with its scene."""
    scene = scene_for_prompt(metadata, rng, exclude_pairs)
    return render(scene, size), scene
