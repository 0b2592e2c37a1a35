"""Shapes-world edits: (source scene, instruction, target scene) triples of the ImgEdit kinds a
rendered world expresses exactly, their scorer, and Recon-PSNR.

Kinds (an object named in an instruction is the only one of its colour and shape in the scene):

- ``add``: "add a red circle" (a new object, placed where it fits);
- ``remove``: "remove the red circle";
- ``replace``: "replace the red circle with a square" (shape; same place, colour and size);
- ``alter``: "make the red circle blue" (colour);
- ``move``: "move the red circle to the left of the blue square" (a clear relation to another object);
- ``background``: "make the background darker" / "lighter" (the grey level, by BACKGROUND_STEP);
- ``count``: "change the number of red circles to three" (one more, or one fewer of a present class).

Scoring (``score_edit``) reads the objects back with the GenEval-style detector (``scorer.detect``):
the edit is *kept* when every object the instruction does not touch is found again, same colour and
shape, its centre within ``KEEP_TOLERANCE`` of where it was; it is *followed* when the detections
left over are exactly what the instruction asks for (the added object, the replaced/recoloured one at
the old place, the moved one in the asked relation to its anchor, none after a removal; the background
darker or lighter than the source's). An edit is correct when both hold. Recon-PSNR (HYDRA-X's
consistency figure) is the PSNR of the output against the source over the pixels the edit should not
change: everything but the edited objects' boxes (source and target, grown by ``REGION_MARGIN``), or
for a background edit the objects' boxes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from hydra_umm.data.shapes.prompts import NUMBERS, plural, with_article
from hydra_umm.data.shapes.render import render, to_array
from hydra_umm.data.shapes.scorer import Detection, detect
from hydra_umm.data.shapes.world import (COLORS, HELDOUT_PAIRS, MAX_OBJECTS, RELATIONS, SHAPES, Scene, ShapeObject,
                                         clear_relation, fits, place, relative_position, sample_scene)

EDIT_KINDS = ("add", "remove", "replace", "alter", "move", "background", "count")
BACKGROUND_STEP = 0.12  # a background edit moves the grey level by this much
BACKGROUND_CHANGE = 0.04  # ... and the scorer asks for at least this much, measured
KEEP_TOLERANCE = 0.08  # largest centre offset (fraction of the side) of an object kept in place
REGION_MARGIN = 2  # pixels around an edited box that Recon-PSNR leaves out


@dataclass(frozen=True)
class Edit:
    """One edit. ``edited``: indices of the source objects the instruction changes (removed,
    replaced, recoloured, moved); ``added``: indices of the target objects it makes (new, replaced,
    recoloured, moved); ``anchor``: the source index a move relates to, with ``relation``."""

    kind: str
    instruction: str
    source: Scene
    target: Scene
    edited: tuple[int, ...] = ()
    added: tuple[int, ...] = ()
    anchor: Optional[int] = None
    relation: Optional[str] = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "instruction": self.instruction, "source": self.source.to_dict(),
                "target": self.target.to_dict(), "edited": list(self.edited), "added": list(self.added),
                "anchor": self.anchor, "relation": self.relation}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Edit":
        return cls(d["kind"], d["instruction"], Scene.from_dict(d["source"]), Scene.from_dict(d["target"]),
                   tuple(d.get("edited", ())), tuple(d.get("added", ())), d.get("anchor"), d.get("relation"))


def _unique(scene: Scene) -> list[int]:
    """Indices of the objects that are the only ones of their colour and shape."""
    names = [o.name for o in scene.objects]
    return [i for i, n in enumerate(names) if names.count(n) == 1]


def _with(scene: Scene, objects: Sequence[ShapeObject], **changes) -> Scene:
    return replace(scene, objects=tuple(objects), **changes)


def _edit(kind: str, source: Scene, rng: np.random.Generator) -> Optional[Edit]:
    """An edit of ``kind`` on ``source``, or None when this scene cannot take one."""
    objects, unique = list(source.objects), _unique(source)
    pick = (lambda items: items[int(rng.integers(len(items)))])
    if kind == "add":
        if len(objects) >= MAX_OBJECTS:
            return None
        present = {(o.color, o.shape) for o in objects}
        new = [(s, c) for c in COLORS for s in SHAPES if (c, s) not in present]
        shape, color = pick(new)
        placed = place(rng, [(shape, color, str(rng.choice(["small", "large"])))], placed=objects)
        if placed is None:
            return None
        target = _with(source, objects + list(placed))
        return Edit(kind, f"add {with_article(placed[0].name)}", source, target, (), (len(objects),))
    if kind == "background":
        darker = source.background >= 0.85
        level = source.background + (-BACKGROUND_STEP if darker else BACKGROUND_STEP)
        return Edit(kind, f"make the background {'darker' if darker else 'lighter'}", source,
                    replace(source, background=round(float(min(level, 0.97)), 4)))
    if kind == "count":  # any class present, one more or one fewer of it
        i = int(rng.integers(len(objects)))
        obj = objects[i]
        count = sum(o.name == obj.name for o in objects)
        more = len(objects) < MAX_OBJECTS and (count == 1 or rng.random() < 0.5)
        words = f"change the number of {obj.color} {plural(obj.shape)} to {NUMBERS[count + (1 if more else -1)]}"
        if not more:
            return Edit(kind, words, source, _with(source, objects[:i] + objects[i + 1:]), (i,))
        placed = place(rng, [(obj.shape, obj.color, obj.size)], placed=objects)
        return None if placed is None else Edit(kind, words, source, _with(source, objects + list(placed)), (),
                                                (len(objects),))
    if not unique:
        return None
    i = pick(unique)
    obj, others = objects[i], objects[:i] + objects[i + 1:]
    if kind == "remove":
        if not others:
            return None
        return Edit(kind, f"remove the {obj.name}", source, _with(source, others), (i,))
    if kind in ("replace", "alter"):
        taken = {(o.color, o.shape) for o in objects}
        if kind == "replace":
            options = [replace(obj, shape=s) for s in SHAPES if (obj.color, s) not in taken]
        else:
            options = [replace(obj, color=c) for c in COLORS if (c, obj.shape) not in taken]
        options = [o for o in options if fits(o.box, others)]
        if not options:
            return None
        new = pick(options)
        words = f"replace the {obj.name} with {with_article(new.shape)}" if kind == "replace" \
            else f"make the {obj.name} {new.color}"
        return Edit(kind, words, source, _with(source, objects[:i] + [new] + objects[i + 1:]), (i,), (i,))
    if kind == "move":
        anchors = [j for j in unique if j != i]
        if not anchors:
            return None
        j = pick(anchors)
        relation = pick(list(RELATIONS))
        for _ in range(100):
            spot = place(rng, [(obj.shape, obj.color, obj.size)], tries=1, placed=others)
            if (spot and clear_relation(spot[0], objects[j]) == relation
                    and relation not in relative_position(obj.box, objects[j].box)):
                target = _with(source, objects[:i] + [spot[0]] + objects[i + 1:])
                words = f"move the {obj.name} {'to the ' + relation if relation in ('left of', 'right of') else relation}"
                return Edit(kind, f"{words} the {objects[j].name}", source, target, (i,), (i,), j, relation)
        return None
    raise ValueError(f"unknown edit kind {kind!r}; use one of {', '.join(EDIT_KINDS)}")


def sample_edit(rng: np.random.Generator, kind: Optional[str] = None,
                exclude_pairs: Sequence[tuple[str, str]] = ()) -> Edit:
    """A random edit (of ``kind``, else a uniformly drawn one) on a random scene of the still world."""
    if kind is not None and kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; use one of {', '.join(EDIT_KINDS)}")
    while True:
        chosen = kind or EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
        edit = _edit(chosen, sample_scene(rng, exclude_pairs=exclude_pairs), rng)
        if edit is not None and not (set(exclude_pairs) & edit.target.pairs()):
            return edit


SPLITS = ("train", "val", "test")
EXACT_PSNR = 100.0  # the Recon-PSNR an exact copy (infinite PSNR) counts as in means and files


def sample_edits(n: int, seed: int = 0, split: str = "train") -> list[Edit]:
    """``n`` edits of ``split`` (each split its own seeded stream), the kinds in turn so that every
    kind is equally represented. As in the still world's splits, no source or target holds a held-out
    colour-shape pair (HELDOUT_PAIRS), so no instruction names one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {list(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return [sample_edit(rng, EDIT_KINDS[i % len(EDIT_KINDS)], HELDOUT_PAIRS) for i in range(n)]


def edit_records(image_size: int, n: int = 100, seed: int = 0, split: str = "train") -> list[dict]:
    """Edits rendered in memory: ``{"source", "target"}`` PIL images, ``instruction`` and ``edit`` (its dict)."""
    return [{"source": render(e.source, image_size), "target": render(e.target, image_size),
             "instruction": e.instruction, "edit": e.to_dict()} for e in sample_edits(n, seed, split)]


# ------------------------------------------------------------------------------------- scoring


def _centre(box: Sequence[float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _as_fraction(d: Detection, side: int) -> Detection:
    return replace(d, box=tuple(v / side for v in d.box))


def _match(wanted: Sequence[ShapeObject], found: Sequence[Detection]) -> tuple[dict[int, int], list[int]]:
    """Each wanted object to a detection of its colour and shape within KEEP_TOLERANCE of its centre
    (least total distance) -> (wanted index -> detection index, unmatched detection indices)."""
    cost = np.full((len(wanted), len(found)), 1e6)
    for a, o in enumerate(wanted):
        for b, d in enumerate(found):
            dist = float(np.linalg.norm(_centre(o.box) - _centre(d.box)))
            if (o.color, o.shape) == (d.color, d.shape) and dist <= KEEP_TOLERANCE:
                cost[a, b] = dist
    rows, cols = linear_sum_assignment(cost) if cost.size else ([], [])
    pairs = {int(a): int(b) for a, b in zip(rows, cols) if cost[a, b] < 1e6}
    return pairs, [b for b in range(len(found)) if b not in pairs.values()]


def _background_level(image: np.ndarray, scene: Scene, side: int) -> float:
    """The mean grey level of the pixels outside every object's (grown) box."""
    return float(image[~_box_mask(scene.objects, side)].mean())


def _box_mask(objects: Sequence[ShapeObject], side: int, margin: int = REGION_MARGIN) -> np.ndarray:
    """(side, side) bool, True inside any object's box grown by ``margin`` pixels."""
    mask = np.zeros((side, side), dtype=bool)
    for o in objects:
        x0, y0, x1, y1 = (int(round(v * side)) for v in o.box)
        mask[max(y0 - margin, 0): y1 + margin, max(x0 - margin, 0): x1 + margin] = True
    return mask


def _may_change(edit: Edit) -> list[int]:
    """The source objects an output may change: the edited ones, and for one fewer of a class any of
    its instances (the instruction names the class, not the instance the target happens to drop)."""
    if edit.kind == "count" and edit.edited:
        name = edit.source.objects[edit.edited[0]].name
        return [i for i, o in enumerate(edit.source.objects) if o.name == name]
    return list(edit.edited)


def unedited_region(edit: Edit, side: int) -> np.ndarray:
    """(side, side) bool: the pixels the edit should leave as they are: for a background edit the
    objects' own pixels (where source and target render alike; their boxes hold background too),
    otherwise everything outside the (grown) boxes of the objects it may change or add."""
    if edit.kind == "background":
        return (np.asarray(render(edit.source, side)) == np.asarray(render(edit.target, side))).all(axis=2)
    changed = [edit.source.objects[i] for i in _may_change(edit)] + [edit.target.objects[i] for i in edit.added]
    return ~_box_mask(changed, side)


def recon_psnr(output: Image.Image | np.ndarray, source: Image.Image | np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB, peak 1) of ``output`` against ``source`` over the pixels where ``region`` is True."""
    a, b = (to_array(x) if isinstance(x, Image.Image) else np.asarray(x, dtype=np.float64) for x in (output, source))
    if a.shape != b.shape or a.shape[:2] != region.shape:
        raise ValueError(f"output {a.shape}, source {b.shape} and region {region.shape} differ in size")
    if not region.any():
        raise ValueError("the unedited region is empty")
    mse = float(((a - b) ** 2)[region].mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def score_edit(output: Image.Image, edit: Edit | Mapping, source: Optional[Image.Image] = None) -> dict:
    """Judge an edited image: ``kept``, ``followed``, ``correct`` (both) and ``recon_psnr`` against
    ``source`` (default: the source scene rendered at the output's size)."""
    edit = edit if isinstance(edit, Edit) else Edit.from_dict(edit)
    side = output.size[0]
    if output.size != (side, side):
        raise ValueError(f"expected a square image, got {output.size}")
    source = source if source is not None else render(edit.source, side)
    found = [_as_fraction(d, side) for d in detect(output)]
    may_change = _may_change(edit)
    kept_objects = [o for i, o in enumerate(edit.source.objects) if i not in may_change]
    pairs, rest = _match(kept_objects, found)
    kept = len(pairs) == len(kept_objects)
    left = [found[b] for b in rest]
    new = [edit.target.objects[i] for i in edit.added]
    if edit.kind == "count" and edit.edited:  # one fewer: all but one of the class stay where they were
        stayed, extra = _match([edit.source.objects[i] for i in may_change], left)
        kept = kept and len(stayed) >= len(may_change) - 1
        followed = len(stayed) == len(may_change) - 1 and not extra
    elif edit.kind in ("replace", "alter"):  # the new look, at the old place
        followed = len(_match(new, left)[0]) == 1 and len(left) == 1
    elif edit.kind == "move":
        anchor = edit.source.objects[edit.anchor]
        anchor_found = found[pairs[kept_objects.index(anchor)]] if kept_objects.index(anchor) in pairs else None
        followed = (anchor_found is not None and len(left) == 1 and (left[0].color, left[0].shape) == (new[0].color, new[0].shape)
                    and edit.relation in relative_position(left[0].box, anchor_found.box))
    elif edit.kind == "background":
        change = _background_level(to_array(output), edit.source, side) - _background_level(to_array(source),
                                                                                            edit.source, side)
        followed = not left and (change <= -BACKGROUND_CHANGE if edit.target.background < edit.source.background
                                 else change >= BACKGROUND_CHANGE)
    else:  # add, remove, count: exactly the new objects remain, wherever they are
        followed = sorted((d.color, d.shape) for d in left) == sorted((o.color, o.shape) for o in new)
    return {"kind": edit.kind, "kept": kept, "followed": bool(followed), "correct": bool(kept and followed),
            "recon_psnr": recon_psnr(output, source, unedited_region(edit, side))}


def summarize_edits(results: Sequence[Mapping]) -> dict:
    """Per kind and overall: the fraction correct (``edit_score``), followed and kept, and the mean
    Recon-PSNR (infinite values, an untouched region copied exactly, count as 100 dB)."""
    def summary(rows: Sequence[Mapping]) -> dict:
        psnr = [min(r["recon_psnr"], EXACT_PSNR) for r in rows]
        return {"edit_score": float(np.mean([r["correct"] for r in rows])),
                "followed": float(np.mean([r["followed"] for r in rows])),
                "kept": float(np.mean([r["kept"] for r in rows])),
                "recon_psnr": float(np.mean(psnr)), "n": len(rows)}

    if not results:
        raise ValueError("no edit results to summarise")
    kinds = [k for k in EDIT_KINDS if any(r["kind"] == k for r in results)]
    return {"overall": summary(results), **{k: summary([r for r in results if r["kind"] == k]) for k in kinds}}


__all__ = ["EDIT_KINDS", "EXACT_PSNR", "Edit", "edit_records", "recon_psnr", "sample_edit", "sample_edits",
           "score_edit", "summarize_edits", "unedited_region"]
