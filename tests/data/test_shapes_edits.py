"""Shapes-world edits: every kind is sampled, seeded and serialisable; the scorer passes the true
target, fails the unedited source, near misses and outputs that lose or displace an untouched
object; instructions agree with their targets; Recon-PSNR against its formula."""

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from hydra_umm.data.shapes.edits import (EDIT_KINDS, Edit, edit_records, recon_psnr, sample_edit, sample_edits,
                                         score_edit, summarize_edits, unedited_region)
from hydra_umm.data.shapes.prompts import NUMBERS
from hydra_umm.data.shapes.render import render, to_array
from hydra_umm.data.shapes.world import COLORS, HELDOUT_PAIRS, fits, place


@pytest.fixture(scope="module")
def edits():
    return sample_edits(42, seed=3)  # six of every kind


def test_every_kind_is_sampled_seeded_and_round_trips(edits):
    assert [e.kind for e in edits[:7]] == list(EDIT_KINDS)
    assert [e.to_dict() for e in sample_edits(42, seed=3)] == [e.to_dict() for e in edits]
    assert all(Edit.from_dict(e.to_dict()) == e for e in edits)
    for e in edits:
        for i in e.edited:  # a named object is the only one of its colour and shape (count edits name a class)
            names = [o.name for o in e.source.objects]
            assert e.kind == "count" or names.count(names[i]) == 1
        if e.kind != "background":
            assert e.source.objects != e.target.objects and e.source.background == e.target.background
        else:
            assert e.source.objects == e.target.objects and e.source.background != e.target.background
    with pytest.raises(ValueError, match="unknown edit kind"):
        sample_edit(np.random.default_rng(0), "rotate")
    for split in ("train", "val", "test"):  # the held-out compositions stay unseen, as in the still world
        for e in sample_edits(140, seed=0, split=split):
            assert not (e.source.pairs() | e.target.pairs()) & set(HELDOUT_PAIRS), e.instruction


def test_the_true_target_is_correct_and_the_untouched_source_is_not(edits):
    for e in edits:
        target = score_edit(render(e.target, 64), e)
        assert target["correct"], (e.instruction, target)
        source = score_edit(render(e.source, 64), e)
        assert source["kept"] and not source["followed"], (e.instruction, source)


def test_losing_an_untouched_object_is_not_kept(edits):
    for e in edits:
        kept = [i for i in range(len(e.source.objects)) if i not in e.edited]
        if e.kind in ("add", "alter") and kept:
            lost = e.target.objects[: kept[0]] + e.target.objects[kept[0] + 1:]
            result = score_edit(render(replace(e.target, objects=lost), 64), e)
            assert not result["kept"] and not result["correct"]
    grey = render(replace(edits[0].source, objects=()), 64)
    assert not score_edit(grey, edits[0])["correct"]


def with_extra_object(scene, rng):
    """``scene`` with one more small object of a colour and shape it does not show (None: no room)."""
    present = {(o.color, o.shape) for o in scene.objects}
    spec = next((shape, color, "small") for color in COLORS for shape in ("circle", "star") if (color, shape) not in present)
    extra = place(rng, [spec], placed=list(scene.objects))
    return None if extra is None else replace(scene, objects=scene.objects + extra)


def test_near_misses_are_not_followed(edits):
    """An output that does the edit plus something else, or the edit's opposite, fails its instruction."""
    rng, tried = np.random.default_rng(0), Counter()
    for e in edits:
        misses = []
        if e.kind in ("alter", "replace") or (e.kind == "count" and e.edited):  # ... and an unasked-for object
            misses.append(with_extra_object(e.target, rng))
        if e.kind == "move":  # the object at the asked place in another colour
            i, taken = e.added[0], {o.color for o in e.target.objects}
            recoloured = replace(e.target.objects[i], color=next(c for c in COLORS if c not in taken))
            misses.append(replace(e.target, objects=e.target.objects[:i] + (recoloured,) + e.target.objects[i + 1:]))
        if e.kind == "background":  # lighter where darker was asked, or the reverse
            opposite = e.source.background - math.copysign(0.08, e.target.background - e.source.background)
            misses.append(replace(e.source, background=round(opposite, 4)) if 0.65 <= opposite <= 1.0 else None)
        for miss in filter(None, misses):
            assert not score_edit(render(miss, 64), e)["followed"], e.instruction
            tried[e.kind] += 1
    assert set(tried) == {"alter", "replace", "count", "move", "background"}, tried


def test_a_displaced_untouched_object_is_not_kept(edits):
    tried = 0
    for e in (x for x in edits if x.kind in ("add", "alter")):
        k = next(k for k in range(len(e.target.objects)) if k not in e.added)
        others = e.target.objects[:k] + e.target.objects[k + 1:]
        for dx, dy in ((0.25, 0), (-0.25, 0), (0, 0.25), (0, -0.25)):
            moved = replace(e.target.objects[k], cx=e.target.objects[k].cx + dx, cy=e.target.objects[k].cy + dy)
            if fits(moved.box, others):
                assert not score_edit(render(replace(e.target, objects=others + (moved,)), 64), e)["kept"], e.instruction
                tried += 1
                break
    assert tried


def test_instructions_say_what_the_target_shows(edits):
    for e in edits:
        if e.kind == "background":
            assert ("darker" in e.instruction) == (e.target.background < e.source.background), e.instruction
        if e.kind == "count":
            color, shapes = e.instruction.split("change the number of ")[1].split(" to ")[0].split(" ")
            n = sum(o.color == color and shapes.startswith(o.shape) for o in e.target.objects)
            assert e.instruction.endswith(f"to {NUMBERS[n]}"), (e.instruction, n)


def test_one_fewer_of_a_class_may_drop_any_of_its_instances(edits):
    e = next(x for x in edits if x.kind == "count" and x.edited
             and sum(o.name == x.source.objects[x.edited[0]].name for o in x.source.objects) >= 2)
    i = e.edited[0]
    j = next(k for k, o in enumerate(e.source.objects) if k != i and o.name == e.source.objects[i].name)
    other = replace(e.source, objects=e.source.objects[:j] + e.source.objects[j + 1:])  # drops the other instance
    assert score_edit(render(other, 64), e)["correct"]
    both = replace(e.source, objects=tuple(o for k, o in enumerate(e.source.objects) if k not in (i, j)))
    assert not score_edit(render(both, 64), e)["followed"]  # two fewer
    region = unedited_region(e, 64)
    for k in (i, j):  # neither instance's place is scored for Recon-PSNR
        x0, y0, x1, y1 = (round(v * 64) for v in e.source.objects[k].box)
        assert not region[(y0 + y1) // 2, (x0 + x1) // 2]


def test_recon_psnr_matches_its_formula_over_the_unedited_region(edits):
    e = next(x for x in edits if x.kind == "remove")
    region = unedited_region(e, 64)
    assert 0 < region.mean() < 1
    removed = e.source.objects[e.edited[0]]
    x0, y0, x1, y1 = (round(v * 64) for v in removed.box)
    assert not region[(y0 + y1) // 2, (x0 + x1) // 2]  # the removed object's place is not scored
    source, target = to_array(render(e.source, 64)), to_array(render(e.target, 64))
    assert recon_psnr(target, source, region) == math.inf  # only the edited box changed
    noisy = np.clip(target + np.random.default_rng(0).normal(0, 0.05, target.shape), 0, 1)
    mse = ((noisy - source) ** 2)[region].mean()
    assert recon_psnr(noisy, source, region) == pytest.approx(10 * np.log10(1 / mse))
    for e in edits:  # the true target changes nothing it should keep, whatever the kind
        assert score_edit(render(e.target, 64), e)["recon_psnr"] == math.inf, e.instruction
    background = next(x for x in edits if x.kind == "background")
    region = unedited_region(background, 64)  # the objects' own pixels, none of the background around them
    o = background.source.objects[0]
    x0, y0, x1, y1 = (round(v * 64) for v in o.box)
    assert 0 < region.mean() < 0.5 and region[(y0 + y1) // 2, (x0 + x1) // 2] and not region[:, 0].any()
    with pytest.raises(ValueError, match="differ in size"):
        recon_psnr(target[:32], source, region)


def test_summary_and_records(edits):
    results = [score_edit(render(e.target, 64), e) for e in edits[:7]]
    results.append(score_edit(render(edits[0].source, 64), edits[0]))
    summary = summarize_edits(results)
    assert summary["overall"]["n"] == 8 and summary["overall"]["edit_score"] == pytest.approx(7 / 8)
    assert summary["add"]["edit_score"] == 0.5 and summary["remove"]["edit_score"] == 1.0
    assert summary["remove"]["recon_psnr"] == 100.0  # exact copies count as 100 dB
    records = edit_records(32, n=3, seed=1)
    assert records[0]["source"].size == (32, 32) and records[0]["instruction"].startswith("add")
