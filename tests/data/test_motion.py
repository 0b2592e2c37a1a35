"""The shapes world in motion: seeded clips, bouncing, captions / questions / metadata against the
world, the tracker (measured on rendered clips, clean and noisy) and the judge of generated clips."""

import re
from collections import Counter

import numpy as np
import pytest

from hydra_umm.data.shapes import (HELDOUT_PAIRS, Clip, MovingObject, Scene, ShapeObject, check_clip, clip_caption,
                                   clip_metadata, clip_questions, clip_records, gaussian_noise, render, render_clip,
                                   sample_clip, track)
from hydra_umm.data.shapes.motion import (CLEAR_RATIO, DIRECTIONS, EVENTS, MIN_TRAVEL, MOVE_WORDS, bounce,
                                          clip_splits)
from hydra_umm.data.shapes.world import BORDER

FRAMES, SIZE, N_CLIPS = 9, 64, 16


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(7)
    return [sample_clip(rng, FRAMES) for _ in range(N_CLIPS)]


@pytest.fixture(scope="module")
def rendered(clips):
    return [render_clip(c, SIZE) for c in clips]


def test_clips_are_deterministic_under_a_seed():
    a = sample_clip(np.random.default_rng(3), FRAMES)
    b = sample_clip(np.random.default_rng(3), FRAMES)
    c = sample_clip(np.random.default_rng(4), FRAMES)
    assert a == b and a.to_dict() == b.to_dict() and a != c
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(render_clip(a, 32), render_clip(b, 32)))
    assert Clip.from_dict(a.to_dict()) == a
    r1, r2 = clip_records(32, n=6, frames=5, seed=1), clip_records(32, n=6, frames=5, seed=1)
    assert [(r["caption"], r["qa"], r["clip"]) for r in r1] == [(r["caption"], r["qa"], r["clip"]) for r in r2]


def test_bounce_equals_a_step_by_step_reflection():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lo, hi = sorted(rng.uniform(0, 1, 2))
        p, v = rng.uniform(lo, hi), rng.uniform(-0.9, 0.9) * (hi - lo)
        pos, vel = p, v
        for t in range(40):
            assert bounce(p, v, t, lo, hi) == pytest.approx(pos, abs=1e-9)
            pos += vel  # the reference: move, then mirror back whatever crossed a wall
            if pos > hi:
                pos, vel = 2 * hi - pos, -vel
            elif pos < lo:
                pos, vel = 2 * lo - pos, -vel


def test_a_mover_bounces_off_the_border_and_stays_inside():
    obj = MovingObject(ShapeObject("square", "red", "small", 0.8, 0.5), vx=0.05, vy=-0.01)
    clip = Clip((obj,), frames=17)
    xs = np.array([clip.scene(t).objects[0].cx for t in range(17)])
    steps = np.diff(xs)
    assert steps[0] > 0 and steps[-1] < 0  # went right, came back left: one bounce on the right wall
    assert np.sum(np.diff(np.sign(steps)) != 0) == 1
    assert np.allclose(np.abs(steps[np.sign(steps) == np.sign(steps[0])][:-1]), 0.05)  # constant speed until the wall
    for t in range(17):
        x0, y0, x1, y1 = clip.scene(t).objects[0].box
        assert BORDER <= x0 and x1 <= 1 - BORDER and BORDER <= y0 and y1 <= 1 - BORDER


def test_sampled_clips_obey_the_world(clips):
    events = Counter(o.event for c in clips for o in c.objects)
    assert set(events) == set(EVENTS), events  # every event occurs in a handful of clips
    for clip in clips:
        assert clip.frames == FRAMES and clip.is_valid()
        assert any(o.event == "moves" for o in clip.objects)
        for o in clip.objects:
            if o.event == "moves":
                dx, dy = o.displacement(FRAMES)
                major, minor = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
                assert major >= MIN_TRAVEL and major >= CLEAR_RATIO * minor
                ux, uy = DIRECTIONS[clip.direction(o)]
                assert np.sign(dx) == ux and abs(dx) > abs(dy) if ux else np.sign(dy) == uy and abs(dy) > abs(dx)
        end = clip.scene(FRAMES - 1).objects
        assert len(end) == len(clip.objects) and len(clip.scene(0).objects) == sum(o.appear == 0 for o in clip.objects)
        assert [o.color for o in end] == [m.end_color for m in clip.objects]


def test_heldout_pairs_only_in_the_heldout_split():
    splits = clip_splits(12, 5, seed=0)
    for split, items in splits.items():
        for _, clip in items:
            pairs = {(o.color, o.shape) for t in range(clip.frames) for o in clip.scene(t).objects}
            assert (split == "heldout") == bool(pairs & set(HELDOUT_PAIRS)), (split, pairs)


def test_captions_and_metadata_agree_with_the_world(clips):
    rng = np.random.default_rng(0)
    for clip in clips:
        text = clip_caption(clip, rng)
        meta = clip_metadata(clip)
        assert meta["frames"] == FRAMES and len(meta["include"]) == len(clip.objects)
        assert Counter((r["shape"], r["color"], r["event"]) for r in meta["include"]) == \
            Counter((o.start.shape, o.start.color, o.event) for o in clip.objects)
        for o in clip.objects:
            assert f"{o.start.color} {o.start.shape}" in text
            if o.event == "moves":
                assert re.search(rf"{o.start.color} {o.start.shape} \w+ {MOVE_WORDS[clip.direction(o)]}\b", text), text
            if o.event == "recolors":
                assert f"{o.start.color} {o.start.shape} turns {o.end_color}" in text
    obj = MovingObject(ShapeObject("circle", "red", "small", 0.6, 0.5), vx=-0.02)
    one = Clip((obj,), frames=17)
    assert clip_metadata(one)["include"] == [{"shape": "circle", "color": "red", "event": "moves", "direction": "left"}]
    assert re.fullmatch(r"(a video in which |a clip where |in this video, )?a red circle \w+ to the left",
                        clip_caption(one, rng))


def test_answers_agree_with_the_world(clips):
    rng = np.random.default_rng(1)
    types = Counter()
    for clip in clips:
        by_name = {f"{o.start.color} {o.start.shape}": o for o in clip.objects}
        movers = [o for o in clip.objects if o.event == "moves"]
        for qa in clip_questions(clip, rng):
            q, a, kind = qa["question"], qa["answer"], qa["type"].removeprefix("mc_")
            types[kind] += 1
            if "choices" in qa:
                assert a in qa["choices"]
            if kind == "direction":
                assert a == clip.direction(by_name[re.search(r"does the (\w+ \w+) move", q).group(1)])
            elif kind == "moved":
                assert len(movers) == 1 and by_name[a] is movers[0]
            elif kind == "moved_yes_no":
                named = by_name[re.search(r"Does the (\w+ \w+) move", q).group(1)]
                assert a == ("yes" if named.event == "moves" else "no")
            elif kind == "count":
                expected = {"at the end": len(clip.scene(FRAMES - 1).objects), "move?": len(movers),
                            "at the start": len(clip.scene(0).objects)}
                assert int(a) == next(v for k, v in expected.items() if k in q)
            elif kind == "color_end":
                shape = re.search(r"is the (\w+) at the end", q).group(1)
                (o,) = [o for o in clip.objects if o.start.shape == shape]
                assert a == o.end_color == clip.scene(FRAMES - 1).objects[clip.objects.index(o)].color
            else:
                raise AssertionError(f"unknown question type {qa['type']}")
    assert set(types) == {"direction", "moved", "moved_yes_no", "count", "color_end"}, types


def directions_read(clip, frames):
    """(recovered, true) directions of the clip's movers; a mover's track is the one that starts
    nearest to it in the first frame."""
    tracks = track(frames)
    out = []
    for o in clip.objects:
        if o.event == "moves":
            start = np.array([o.start.cx, o.start.cy]) * SIZE
            nearest = min(tracks, key=lambda tr: np.linalg.norm(tr.centre(tr.detections[0][1]) - start))
            out.append((nearest.summary(SIZE)["direction"], clip.direction(o)))
    return out


def test_tracker_recovers_motion_on_clean_and_noisy_clips(clips, rendered):
    rng = np.random.default_rng(0)
    clean = [d for c, f in zip(clips, rendered) for d in directions_read(c, f)]
    noisy = [d for c, f in zip(clips, rendered) for d in directions_read(c, [gaussian_noise(x, 0.05, rng) for x in f])]
    acc_clean = np.mean([a == b for a, b in clean])
    acc_noisy = np.mean([a == b for a, b in noisy])
    print(f"\ndirection accuracy on {len(clean)} movers: clean {acc_clean:.2f}, noise sigma=0.05 {acc_noisy:.2f}")
    assert acc_clean == 1.0 and acc_noisy >= 0.9
    judged = [check_clip(f, clip_metadata(c)) for c, f in zip(clips, rendered)]
    assert all(j["correct"] for j in judged), [j["reason"] for j in judged if not j["correct"]]


def test_check_clip_rejects_clips_that_do_not_match(clips, rendered):
    clip, frames = next((c, f) for c, f in zip(clips, rendered) if any(o.event == "moves" for o in c.objects))
    meta = clip_metadata(clip)
    reverse = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wrong_way = {**meta, "include": [{**r, "direction": reverse[r["direction"]]} if r["event"] == "moves" else r
                                     for r in meta["include"]]}
    assert not check_clip(frames, wrong_way)["correct"]
    recoloured = [{**r, "color": "red" if r["color"] != "red" else "blue"} for r in meta["include"]]
    wrong_colour = {**meta, "include": recoloured}
    assert not check_clip(frames, wrong_colour)["correct"]
    missing_one = {**meta, "include": meta["include"][1:]}
    result = check_clip(frames, missing_one)
    assert not result["correct"] and "unexpected object" in result["reason"]
    frozen = [frames[0]] * FRAMES  # nothing moves
    assert not check_clip(frozen, meta)["correct"]
    blank = [render(Scene((), clip.background, clip.texture_seed), SIZE)] * FRAMES
    assert not check_clip(blank, meta)["correct"]
    with pytest.raises(ValueError, match="frames"):
        check_clip(frames[:-1], meta)


def test_check_clip_reads_the_recolour_target_and_every_still_object():
    clip = Clip((MovingObject(ShapeObject("circle", "red", "large", 0.3, 0.3), vx=0.05),
                 MovingObject(ShapeObject("square", "blue", "large", 0.7, 0.75)),
                 MovingObject(ShapeObject("star", "green", "large", 0.25, 0.75), recolor=(4, "yellow"))), frames=9)
    assert clip.is_valid()
    frames, meta = render_clip(clip, 64), clip_metadata(clip)
    assert check_clip(frames, meta)["correct"]
    to_purple = [{**r, "to": "purple"} if r["event"] == "recolors" else r for r in meta["include"]]
    assert not check_clip(frames, {**meta, "include": to_purple})["correct"]
    result = check_clip(frames, {**meta, "include": [r for r in meta["include"] if r["event"] != "still"]})
    assert not result["correct"] and "unexpected object" in result["reason"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        sample_clip(np.random.default_rng(0), 1)
    with pytest.raises(ValueError, match="n_objects"):
        sample_clip(np.random.default_rng(0), 5, n_objects=9)
    with pytest.raises(ValueError, match="out of range"):
        sample_clip(np.random.default_rng(0), 5).scene(5)
