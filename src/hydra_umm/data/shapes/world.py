"""The shapes world: its vocabulary, the scene model and the seeded scene sampler.

A scene is resolution-free: every object has a centre and a radius as fractions of the image side
(x to the right, y downwards), so one scene renders at any size. An object's ``box`` is the tight
box ``[x0, y0, x1, y1]`` of its drawn outline, also in fractions of the side.

Objects never overlap: their boxes keep a gap of ``GAP`` (and ``BORDER`` from the image edge), so
a colour segmentation can separate them again (see ``scorer.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

# Six colours well apart in hue (name -> RGB), the names GenEval uses for them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 15),
    "yellow": (230, 225, 20),
    "green": (30, 165, 45),
    "blue": (35, 75, 225),
    "purple": (145, 45, 205),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# Radius (half the side of the shape's bounding square) as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.12, "large": 0.18}
MAX_OBJECTS = 4
GAP = 0.06  # smallest gap between two objects' boxes, fraction of the side
BORDER = 0.03  # smallest gap between a box and the image edge

# Colour-shape compositions never shown in training (the held-out split has at least one of them).
# Each colour and each shape still appears in training through its other pairs.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (("red", "triangle"), ("green", "star"), ("blue", "cross"))

# GenEval's relative-position rule (evaluation/evaluate_images.py): a relation holds when the
# centre offset, shrunk by POSITION_THRESHOLD times the summed box sides, points mostly that way.
POSITION_THRESHOLD = 0.1
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def shape_outline(shape: str) -> Optional[np.ndarray]:
    """Polygon vertices (V, 2) of ``shape`` for radius 1 with its box centred on the origin;
    ``None`` for the circle (drawn as an ellipse of radius 1)."""
    if shape == "circle":
        return None
    if shape == "square":
        s = 0.85
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif shape == "triangle":  # equilateral, pointing up, width 2
        h = math.sqrt(3.0) / 2.0
        pts = [(0.0, -h), (1.0, h), (-1.0, h)]
    elif shape == "star":  # five points, inner radius half the outer one, pointing up
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.5
            a = math.radians(-90.0 + 36.0 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":  # a plus sign whose arms are a third of its extent
        s, w = 0.95, 0.95 / 3.0
        pts = [(-w, -s), (w, -s), (w, -w), (s, -w), (s, w), (w, w), (w, s), (-w, s), (-w, w), (-s, w), (-s, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    pts = np.asarray(pts, dtype=np.float64)
    return pts - (pts.min(0) + pts.max(0)) / 2.0  # centre the box


@functools.cache
def _half_extent(shape: str) -> tuple[float, float]:
    pts = shape_outline(shape)
    if pts is None:
        return 1.0, 1.0
    return float(pts[:, 0].max()), float(pts[:, 1].max())


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str  # "small" | "large"
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        hx, hy = _half_extent(self.shape)
        r = self.radius
        return (self.cx - hx * r, self.cy - hy * r, self.cx + hx * r, self.cy + hy * r)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: float = 0.9  # grey level in [0, 1]
    texture_seed: int = 0  # seeds the background's light texture

    def to_dict(self) -> dict:
        return {
            "objects": [dict(asdict(o), box=[round(v, 5) for v in o.box]) for o in self.objects],
            "background": self.background,
            "texture_seed": self.texture_seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        keys = ("shape", "color", "size", "cx", "cy")
        return cls(
            objects=tuple(ShapeObject(**{k: o[k] for k in keys}) for o in d["objects"]),
            background=float(d.get("background", 0.9)),
            texture_seed=int(d.get("texture_seed", 0)),
        )

    def key(self) -> tuple:
        """Identity of the scene's content (used to keep splits from sharing a scene)."""
        return tuple(sorted((o.shape, o.color, o.size, round(o.cx, 4), round(o.cy, 4)) for o in self.objects))

    def pairs(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD,
                      dominance: float = 0.5) -> set[str]:
    """Relations of box A to box B (``"left of"``, ``"right of"``, ``"above"``, ``"below"``),
    GenEval's rule with its defaults; larger ``threshold``/``dominance`` give a stricter test."""
    a, b = np.asarray(box_a, dtype=np.float64), np.asarray(box_b, dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2.0 - (b[:2] + b[2:]) / 2.0
    dims = (a[2:] - a[:2]) + (b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3 * max(dims.max(), 1e-9)):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -dominance:
        rel.add("left of")
    if dx > dominance:
        rel.add("right of")
    if dy < -dominance:
        rel.add("above")
    if dy > dominance:
        rel.add("below")
    return rel


def clear_relation(a: ShapeObject, b: ShapeObject) -> Optional[str]:
    """The relation of A to B when it is the only one under GenEval's rule and still holds with a
    wider margin; else ``None`` (no relation, or a diagonal one)."""
    strict = relative_position(a.box, b.box, threshold=0.15, dominance=0.6)
    return next(iter(strict)) if len(strict) == 1 and strict == relative_position(a.box, b.box) else None


def fits(box: tuple[float, ...], others: Iterable[ShapeObject]) -> bool:
    if box[0] < BORDER or box[1] < BORDER or box[2] > 1 - BORDER or box[3] > 1 - BORDER:
        return False
    for o in others:
        ob = o.box
        if not (box[2] + GAP <= ob[0] or ob[2] + GAP <= box[0] or box[3] + GAP <= ob[1] or ob[3] + GAP <= box[1]):
            return False
    return True


def place(rng: np.random.Generator, specs: Sequence[tuple[str, str, str]], tries: int = 200,
          placed: Sequence[ShapeObject] = ()) -> Optional[tuple[ShapeObject, ...]]:
    """Place objects ``(shape, colour, size)`` at random non-overlapping positions after
    ``placed``; ``None`` if some object found no room in ``tries`` attempts."""
    out = list(placed)
    for shape, color, size in specs:
        hx, hy = _half_extent(shape)
        r = SIZES[size]
        for _ in range(tries):
            cx = rng.uniform(BORDER + hx * r, 1 - BORDER - hx * r)
            cy = rng.uniform(BORDER + hy * r, 1 - BORDER - hy * r)
            obj = ShapeObject(shape, color, size, float(cx), float(cy))
            if fits(obj.box, out):
                out.append(obj)
                break
        else:
            return None
    return tuple(out[len(placed):])


def background(rng: np.random.Generator) -> tuple[float, int]:
    """A light grey level and a texture seed."""
    return float(rng.uniform(0.8, 0.95)), int(rng.integers(2**31))


def sample_scene(rng: np.random.Generator, n_objects: Optional[int] = None, exclude_pairs: Iterable[tuple[str, str]] = (),
                 require_pair: Optional[tuple[str, str]] = None) -> Scene:
    """A random scene of 1..MAX_OBJECTS objects.

    ``exclude_pairs``: (colour, shape) compositions that must not appear; ``require_pair``: one
    composition that must appear. Repeated objects are likely (counting needs them): each new
    object copies an earlier one's colour and shape with probability 0.3.
    """
    exclude = set(exclude_pairs)
    if require_pair is not None and require_pair in exclude:
        raise ValueError(f"require_pair {require_pair} is also excluded")
    allowed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in exclude]
    if not allowed:
        raise ValueError("every colour-shape pair is excluded")
    if n_objects is not None and not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n_objects}")
    while True:
        n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
        pairs: list[tuple[str, str]] = [require_pair] if require_pair is not None else []
        while len(pairs) < n:
            if pairs and rng.random() < 0.3:
                pairs.append(pairs[int(rng.integers(len(pairs)))])
            else:
                pairs.append(allowed[int(rng.integers(len(allowed)))])
        order = rng.permutation(n)
        specs = [(pairs[i][1], pairs[i][0], str(rng.choice(list(SIZES)))) for i in order]
        objects = place(rng, specs)
        if objects is not None:
            level, seed = background(rng)
            return Scene(objects, level, seed)


__all__ = [
    "BORDER", "COLORS", "GAP", "HELDOUT_PAIRS", "MAX_OBJECTS", "POSITION_THRESHOLD", "RELATIONS", "SHAPES",
    "SIZES", "Scene", "ShapeObject", "background", "clear_relation", "place", "relative_position",
    "sample_scene", "shape_outline",
]
