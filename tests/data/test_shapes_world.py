"""The shapes world: sampler, renderer, captions and questions (determinism and consistency)."""

import re
from collections import Counter

import numpy as np
import pytest

from hydra_umm.data.shapes import (COLORS, HELDOUT_PAIRS, SHAPES, Scene, ShapeObject, caption, questions,
                                   relative_position, render, sample_scene)
from hydra_umm.data.shapes.prompts import NUMBERS, plural
from hydra_umm.data.shapes.questions import N_CHOICES
from hydra_umm.data.shapes.world import BORDER, GAP, MAX_OBJECTS, clear_relation


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(0)
    return [sample_scene(rng) for _ in range(200)]


def test_vocabulary():
    assert len(SHAPES) >= 4 and len(COLORS) == 6
    hues = sorted(__import__("colorsys").rgb_to_hsv(*(v / 255 for v in rgb))[0] for rgb in COLORS.values())
    gaps = np.diff(hues + [hues[0] + 1])
    assert gaps.min() >= 25 / 360  # well separated in hue
    for color, shape in HELDOUT_PAIRS:  # every colour and shape stays in training through other pairs
        assert color in COLORS and shape in SHAPES


def test_sampling_and_rendering_are_deterministic():
    def make(seed):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng)
        return scene, np.asarray(render(scene, 64)), caption(scene, rng), questions(scene, rng)

    a, b, c = make(7), make(7), make(8)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    assert a[0] != c[0]


def test_scenes_are_valid_and_non_overlapping(scenes):
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == set(range(1, MAX_OBJECTS + 1))
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.size for s in scenes for o in s.objects} == {"small", "large"}
    for s in scenes:
        for i, a in enumerate(s.objects):
            x0, y0, x1, y1 = a.box
            assert BORDER - 1e-9 <= x0 < x1 <= 1 - BORDER + 1e-9 and BORDER - 1e-9 <= y0 < y1 <= 1 - BORDER + 1e-9
            for b in s.objects[i + 1:]:
                bx0, by0, bx1, by1 = b.box
                assert x1 + GAP <= bx0 or bx1 + GAP <= x0 or y1 + GAP <= by0 or by1 + GAP <= y0


def test_scene_dict_round_trip(scenes):
    for s in scenes[:20]:
        assert Scene.from_dict(s.to_dict()) == s


def test_exclude_and_require_pairs():
    rng = np.random.default_rng(1)
    for _ in range(100):
        assert not sample_scene(rng, exclude_pairs=HELDOUT_PAIRS).pairs() & set(HELDOUT_PAIRS)
        assert ("green", "star") in sample_scene(rng, require_pair=("green", "star")).pairs()
    with pytest.raises(ValueError, match="also excluded"):
        sample_scene(rng, exclude_pairs=[("red", "star")], require_pair=("red", "star"))
    with pytest.raises(ValueError, match="n_objects"):
        sample_scene(rng, n_objects=5)
    with pytest.raises(ValueError, match="unknown shape"):
        ShapeObject("hexagon", "red", "small", 0.5, 0.5)


def test_relative_position_follows_geneval():
    a = (0.1, 0.4, 0.3, 0.6)
    assert relative_position(a, (0.6, 0.4, 0.8, 0.6)) == {"left of"}
    assert relative_position((0.6, 0.4, 0.8, 0.6), a) == {"right of"}
    assert relative_position(a, (0.1, 0.0, 0.3, 0.2)) == {"below"}
    assert relative_position((0.0, 0.0, 0.2, 0.2), (0.7, 0.7, 0.9, 0.9)) == {"left of", "above"}
    assert relative_position(a, (0.12, 0.42, 0.32, 0.62)) == set()  # nearly the same place


def test_render_is_antialiased_on_grey(scenes):
    image = np.asarray(render(scenes[3], 128), dtype=np.float64) / 255
    assert image.shape == (128, 128, 3)
    sat = image.max(2) - image.min(2)
    assert np.median(sat) < 0.02  # the background has no hue
    assert ((sat > 0.1) & (sat < 0.4)).any()  # partially covered edge pixels
    with pytest.raises(ValueError, match="image size"):
        render(scenes[0], 8)


def test_empty_scene_has_no_caption_or_questions():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="empty scene"):
        caption(Scene(()), rng)
    with pytest.raises(ValueError, match="empty scene"):
        questions(Scene(()), rng)


def _mentions(text: str, color: str | None, shape: str) -> bool:
    adjectives = rf"(?:(?:small|large) )?{color} " if color else r"(?:(?:small|large) )?"
    return re.search(rf"\b{adjectives}(?:{shape}|{plural(shape)})\b", text) is not None


def test_captions_name_every_object_with_its_count(scenes):
    rng = np.random.default_rng(2)
    texts, colorless = set(), 0
    for s in scenes:
        text = caption(s, rng)
        texts.add(text.split(" ")[0])
        named = any(re.search(rf"\b{c}\b", text) for c in COLORS)
        colorless += not named
        key = (lambda o: (o.color, o.shape)) if named else (lambda o: (None, o.shape))
        for (color, shape), n in Counter(map(key, s.objects)).items():
            assert _mentions(text, color, shape), (text, s)
            if n > 1 and all(o.size == s.objects[0].size for o in s.objects):
                assert NUMBERS[n] in text, text
    assert len(texts) >= 5  # varied templates
    assert 0.2 < colorless / len(scenes) < 0.5, colorless  # GenEval's colour-free prompts are covered


def test_caption_relations_point_the_right_way():
    scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "small", 0.8, 0.5)))
    texts = [caption(scene, np.random.default_rng(seed)) for seed in range(60)]
    assert any("left of" in t for t in texts) and not any("right of" in t for t in texts), texts


def test_questions_agree_with_the_scene(scenes):
    rng = np.random.default_rng(3)
    kinds = Counter()
    for s in scenes:
        objs = s.objects
        for qa in questions(s, rng, unseen_pairs=HELDOUT_PAIRS):
            kinds[qa["type"]] += 1
            q, a = qa["question"], qa["answer"]
            assert re.fullmatch(r"[a-z0-9]+", a), qa  # one short word or number
            if "choices" in qa:
                assert qa["type"].startswith("mc_") and a in qa["choices"] and len(set(qa["choices"])) == N_CHOICES
            if q.startswith("How many objects"):
                assert a == str(len(objs))
            elif m := re.match(r"How many (\w+) are there", q):
                shape = {plural(s): s for s in SHAPES}[m.group(1)]
                assert a == str(sum(o.shape == shape for o in objs))
            elif m := re.match(r"How many (\w+) objects", q):
                assert a == str(sum(o.color == m.group(1) for o in objs))
            elif m := re.match(r"What color is the (\w+)\?", q):
                assert [o.color for o in objs if o.shape == m.group(1)] == [a]
            elif m := re.match(r"What shape is the (\w+) object\?", q):
                assert [o.shape for o in objs if o.color == m.group(1)] == [a]
            elif m := re.match(r"Is there an? (\w+) (\w+)\?", q):
                present = (m.group(1), m.group(2)) in s.pairs()
                assert a == ("yes" if present else "no")
                assert present or (m.group(1), m.group(2)) not in HELDOUT_PAIRS
            elif m := re.match(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", q):
                (x,), (y,) = ([o for o in objs if (o.color, o.shape) == (m.group(i), m.group(i + 1))] for i in (1, 3))
                relation = clear_relation(x, y)
                assert relation.split()[0] == a and relative_position(x.box, y.box) == {relation}
            elif m := re.match(r"Is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", q):
                (x,), (y,) = ([o for o in objs if (o.color, o.shape) == (m.group(i), m.group(i + 1))] for i in (1, 4))
                assert a == ("yes" if clear_relation(x, y) == m.group(3) else "no")
            else:
                raise AssertionError(f"unexpected question {q!r}")
    expected = {"count", "color", "shape", "position", "position_yes_no", "exist",
                "mc_count", "mc_color", "mc_shape", "mc_position"}
    assert set(kinds) == expected, kinds
