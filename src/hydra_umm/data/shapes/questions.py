"""Question-answer pairs about a scene, for understanding: counting, colour of a named object,
shape of a named colour, relative position, existence, and multiple-choice versions.

Answers are single words or numbers. An object is only named when the name is unambiguous in the
scene (a unique shape, colour, or colour-shape pair); positions are only asked when clear.
Each QA is ``{"question", "answer", "type"}`` plus ``"choices"`` for multiple choice (the
question text lists the choices too, so a plain text model sees them).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from hydra_umm.data.shapes.prompts import plural, with_article
from hydra_umm.data.shapes.world import COLORS, MAX_OBJECTS, SHAPES, Scene, clear_relation

POSITION_ANSWERS = {"left of": "left", "right of": "right", "above": "above", "below": "below"}
N_CHOICES = 4


def _pick(items, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def qa_item(question: str, answer: str, kind: str) -> dict:
    return {"question": question, "answer": answer, "type": kind}


def multiple_choice(qa: dict, options: list[str], rng: np.random.Generator) -> dict:
    """The multiple-choice version of ``qa``: the answer among up to N_CHOICES - 1 distractors."""
    wrong = [o for o in options if o != qa["answer"]]
    picked = [wrong[i] for i in rng.choice(len(wrong), size=min(N_CHOICES - 1, len(wrong)), replace=False)]
    choices = [qa["answer"], *picked]
    choices = [choices[i] for i in rng.permutation(len(choices))]
    return {"question": qa["question"], "answer": qa["answer"],
            "type": f"mc_{qa['type']}", "choices": choices}


def questions(scene: Scene, rng: np.random.Generator, unseen_pairs: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """QA pairs about ``scene``: one of each kind that the scene allows, in random order.
    ``unseen_pairs``: (colour, shape) compositions never to mention unless the scene holds them."""
    if not scene.objects:
        raise ValueError("cannot ask questions about an empty scene")
    unseen = set(unseen_pairs)
    objs = scene.objects
    shapes, colors = Counter(o.shape for o in objs), Counter(o.color for o in objs)
    pairs = Counter((o.color, o.shape) for o in objs)
    counts = [str(n) for n in range(MAX_OBJECTS + 1)]
    out = []

    # counting: all objects, one shape, one colour
    out.append(qa_item("How many objects are there?", str(len(objs)), "count"))
    shape = _pick(list(shapes) if rng.random() < 0.7 else SHAPES, rng)  # mostly present ones
    out.append(qa_item(f"How many {plural(shape)} are there?", str(shapes[shape]), "count"))
    color = _pick(list(colors) if rng.random() < 0.7 else list(COLORS), rng)
    out.append(qa_item(f"How many {color} objects are there?", str(colors[color]), "count"))
    out.append(multiple_choice(out[0], counts, rng))

    # colour of a named (unique) shape; shape of a named (unique) colour
    unique_shapes = [s for s, n in shapes.items() if n == 1]
    if unique_shapes:
        s = _pick(unique_shapes, rng)
        qa = qa_item(f"What color is the {s}?", next(o.color for o in objs if o.shape == s), "color")
        out += [qa, multiple_choice(qa, list(COLORS), rng)]
    unique_colors = [c for c, n in colors.items() if n == 1]
    if unique_colors:
        c = _pick(unique_colors, rng)
        qa = qa_item(f"What shape is the {c} object?", next(o.shape for o in objs if o.color == c), "shape")
        out += [qa, multiple_choice(qa, list(SHAPES), rng)]

    # relative position of two uniquely named objects
    named = [o for o in objs if pairs[(o.color, o.shape)] == 1]
    clear = [(a, b, r) for a in named for b in named if a is not b and (r := clear_relation(a, b)) is not None]
    if clear:
        a, b, rel = _pick(clear, rng)
        qa = qa_item(f"Where is the {a.name} relative to the {b.name}?", POSITION_ANSWERS[rel], "position")
        out += [qa, multiple_choice(qa, list(POSITION_ANSWERS.values()), rng)]
        asked = _pick(list(POSITION_ANSWERS), rng)
        out.append(qa_item(f"Is the {a.name} {asked} the {b.name}?", "yes" if asked == rel else "no", "position_yes_no"))

    # existence: one present and one absent colour-shape pair, in random order
    present = _pick(list(pairs), rng)
    absent_pairs = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in pairs and (c, s) not in unseen]
    absent = _pick(absent_pairs, rng)
    exist = [qa_item(f"Is there {with_article(f'{c} {s}')}?", answer, "exist")
             for (c, s), answer in ((present, "yes"), (absent, "no"))]
    out += [exist[i] for i in rng.permutation(2)]
    return [out[i] for i in rng.permutation(len(out))]
