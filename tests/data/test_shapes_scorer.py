"""The shapes scorer: objects read back from pixels, GenEval's judgement, its accuracy (>= 99% per
category on matching renderings), its rejection of mismatching images, and the GenEval layout."""

import json
from collections import defaultdict

import itertools

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from hydra_umm.bench.shapes import robustness
from hydra_umm.data.shapes import (COLORS, SHAPES, TAGS, Scene, ShapeObject, detect, evaluate, format_scores,
                                   gaussian_blur, gaussian_noise, generate_prompts, render, render_prompt,
                                   sample_scene, score_against_other_prompts, score_generations, score_image)

SAMPLES = {64: 2, 128: 1}  # renderings per prompt at each size


@pytest.fixture(scope="module")
def rendered():
    """(size, metadata, image, scene) for every prompt of a GenEval-style suite."""
    rng = np.random.default_rng(0)
    prompts = generate_prompts(rng, per_tag=20)
    return [(size, meta, *render_prompt(meta, rng, size)) for size, k in SAMPLES.items() for meta in prompts for _ in range(k)]


def _per_category(rows):
    acc = defaultdict(list)
    for size, tag, ok in rows:
        acc[(size, tag)].append(ok)
    return {key: (float(np.mean(v)), len(v)) for key, v in sorted(acc.items())}


def test_accuracy_on_matching_renderings_is_at_least_99_percent(rendered):
    rows = []
    for size, meta, image, scene in rendered:
        assert evaluate(scene.objects, meta)[0], meta  # the scene itself satisfies the prompt
        rows.append((size, meta["tag"], score_image(image, meta)["correct"]))
    table = _per_category(rows)
    print(f"\nscorer accuracy on {len(rows)} matching renderings:")
    for (size, tag), (acc, n) in table.items():
        print(f"  {size:>4}px {tag:<14} {acc:7.2%}  (n={n})")
    assert {tag for _, tag in table} == set(TAGS)
    assert all(acc >= 0.99 for acc, _ in table.values()), table


def test_mismatching_renderings_are_rejected(rendered):
    """Each image judged against the next different prompt of its category: the scorer must agree
    with the judgement of the true scene, which rejects most of them."""
    by_tag = defaultdict(list)
    for row in rendered:
        by_tag[(row[0], row[1]["tag"])].append(row)
    agree, rejected, total = 0, 0, 0
    for rows in by_tag.values():
        for i, (_, meta, image, scene) in enumerate(rows):
            other = next(r[1] for r in rows[i + 1:] + rows[:i] if r[1] != meta)
            truth = evaluate(scene.objects, other)[0]
            judged = score_image(image, other)["correct"]
            agree += truth == judged
            rejected += not judged
            total += 1
    print(f"\nmismatched prompts: scorer agrees with the true scene on {agree / total:.2%}, rejects {rejected / total:.2%} (n={total})")
    assert agree / total >= 0.99
    assert rejected / total >= 0.8


def test_detect_recovers_random_scenes():
    rng = np.random.default_rng(5)
    exact, n = 0, 100
    for i in range(n):
        scene = sample_scene(rng)
        size = 64 if i % 2 else 128
        found = detect(render(scene, size))
        truth = sorted((o.color, o.shape, o.size) for o in scene.objects)
        exact += sorted((o.color, o.shape, o.size) for o in found) == truth
        for o in found:  # boxes within 1.5 px of the truth
            best = min(scene.objects, key=lambda t: sum(abs(a * size - b) for a, b in zip(t.box, o.box)))
            assert max(abs(a * size - b) for a, b in zip(best.box, o.box)) <= 1.5
    print(f"\nexact scene recovery (colour, shape, size of every object): {exact}/{n}")
    assert exact >= 0.99 * n


def test_blank_image_has_no_objects_and_bad_input_is_refused():
    assert detect(render(Scene(()), 64)) == []
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        detect(np.full((32, 32, 3), 200.0))
    with pytest.raises(ValueError, match="RGB image"):
        detect(np.zeros((32, 32)))


def _image(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8))


def _off_palette(rng):
    """A saturated colour at least 0.35 (RGB, [0, 1] units) from every palette colour."""
    palette = np.array(list(COLORS.values())) / 255
    while True:
        c = rng.uniform(0.0, 1.0, 3)
        if np.linalg.norm(palette - c, axis=1).min() > 0.35 and np.ptp(c) > 0.3:
            return c


def _uniform_noise(rng, size):
    return _image(rng.uniform(0.0, 1.0, (size, size, 3)))


def _grey_noise(rng, size):  # Gaussian pixel noise around a grey level, light ones included
    return _image(rng.uniform(0.3, 0.95) + rng.normal(0.0, rng.uniform(0.1, 0.5), (size, size, 3)))


def _smooth_colour_field(rng, size):  # low-frequency colour noise stretched to the full range
    field = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size, 3)), (size / 12, size / 12, 0))
    return _image((field - field.min((0, 1))) / np.ptp(field, (0, 1)))


def _blobs_on_grey(rng, size):  # soft blobs of non-palette colours on the world's light grey
    img = np.full((size, size, 3), rng.uniform(0.8, 0.95))
    yy, xx = np.mgrid[:size, :size] / size
    for _ in range(int(rng.integers(1, 5))):
        cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.08, 0.2)]
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - w) + _off_palette(rng) * w
    return _image(img + rng.normal(0.0, 0.03, img.shape))


def _blurred_mess(rng, size):  # random colour blocks, noised and blurred
    k = int(rng.integers(4, 12))
    blocks = np.asarray(_image(rng.uniform(0.0, 1.0, (k, k, 3))).resize((size, size), Image.NEAREST)) / 255
    return _image(ndimage.gaussian_filter(blocks + rng.normal(0.0, 0.05, blocks.shape), (2.5, 2.5, 0)))


NON_SCENES = {"uniform noise": _uniform_noise, "grey noise": _grey_noise, "smooth colour field": _smooth_colour_field,
              "off-palette blobs": _blobs_on_grey, "blurred mess": _blurred_mess}


def test_images_without_shapes_fail_object_prompts():
    """An untrained generator draws noise or blobs: it must not pass "a photo of a triangle" by
    chance. 50 images per kind (seeded, 64 and 128 px) against every single- and two-object prompt."""
    prompts = ([{"tag": "single_object", "include": [{"class": s, "count": 1}]} for s in SHAPES]
               + [{"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}]}
                  for a, b in itertools.combinations(SHAPES, 2)])
    rates = {}
    for k, (name, make) in enumerate(NON_SCENES.items()):
        rng = np.random.default_rng(100 + k)
        found = [detect(make(rng, 64 if i % 2 else 128)) for i in range(50)]
        passed = [any(evaluate(objects, meta)[0] for meta in prompts) for objects in found]
        rates[name] = (float(np.mean(passed)), float(np.mean([len(f) for f in found])))
    print("\nimages without shapes: fraction passing some object prompt, mean detections")
    for name, (rate, mean) in rates.items():
        print(f"  {name:<20} {rate:6.2%}  {mean:.2f}")
    assert all(rate <= 0.02 for rate, _ in rates.values()), rates


@pytest.mark.parametrize("off", [(0.95, 0.45, 0.75), (0.1, 0.7, 0.7)])  # pink, teal
def test_object_of_no_palette_colour_is_not_detected(off):
    """A rendered object recoloured off the palette is ignored; the other objects are still found."""
    kept, other = ShapeObject("square", "red", "large", 0.25, 0.3), ShapeObject("circle", "blue", "large", 0.7, 0.7)
    base = np.asarray(render(Scene((kept,)), 64), dtype=np.float64) / 255
    full = np.asarray(render(Scene((kept, other)), 64), dtype=np.float64) / 255
    diff = np.abs(full - base).max(2)
    alpha = (diff / diff.max())[..., None]  # the circle's coverage
    recoloured = _image(base * (1 - alpha) + alpha * np.array(off))
    assert [(o.shape, o.color) for o in detect(render(Scene((kept, other)), 64))] == [("circle", "blue"), ("square", "red")]
    assert [(o.shape, o.color) for o in detect(recoloured)] == [("square", "red")]


def test_dark_or_coloured_background_is_no_shapes_world():
    scene = Scene((ShapeObject("star", "yellow", "large", 0.5, 0.5),))
    arr = np.asarray(render(scene, 64), dtype=np.float64) / 255
    assert [o.shape for o in detect(arr)] == ["star"]
    grey = np.isclose(arr.max(2), arr.min(2))[..., None]
    assert detect(np.where(grey, 0.3, arr)) == []  # dark grey background
    assert detect(np.where(grey, np.array([0.9, 0.7, 0.9]), arr)) == []  # tinted background


def _obj(shape, color, x, y):
    return ShapeObject(shape, color, "small", x, y)


def test_evaluate_follows_geneval_rules():
    two_circles = {"tag": "counting", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}]}
    circles = [_obj("circle", "red", x, 0.5) for x in (0.2, 0.5, 0.8)]
    assert evaluate(circles[:2], two_circles)[0]
    ok, reason = evaluate(circles, two_circles)
    assert not ok and "circle<3" in reason
    assert not evaluate(circles[:1], two_circles)[0]
    # colour is checked on the first (most confident) `count` objects of the class only
    red = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    assert evaluate([_obj("circle", "red", 0.2, 0.5), _obj("circle", "blue", 0.8, 0.5)], red)[0]
    assert not evaluate([_obj("circle", "blue", 0.2, 0.5), _obj("circle", "red", 0.8, 0.5)], red)[0]
    # position: include[1] must stand in the relation to include[0]
    left = {"tag": "position", "include": [{"class": "square", "count": 1},
                                           {"class": "star", "count": 1, "position": ["left of", 0]}]}
    assert evaluate([_obj("square", "red", 0.8, 0.5), _obj("star", "blue", 0.2, 0.5)], left)[0]
    assert not evaluate([_obj("square", "red", 0.2, 0.5), _obj("star", "blue", 0.8, 0.5)], left)[0]
    ok, reason = evaluate([_obj("star", "blue", 0.2, 0.5)], left)
    assert not ok and "no target" in reason
    # ... for every counted object, against every object of the referenced clause
    two_left = {"tag": "position", "include": [{"class": "square", "count": 1},
                                               {"class": "star", "count": 2, "position": ["left of", 0]}]}
    assert not evaluate([_obj("square", "red", 0.5, 0.5), _obj("star", "blue", 0.2, 0.5),
                         _obj("star", "blue", 0.8, 0.5)], two_left)[0]
    of_two = {"tag": "position", "include": [{"class": "square", "count": 2},
                                             {"class": "star", "count": 1, "position": ["left of", 0]}]}
    assert not evaluate([_obj("square", "red", 0.5, 0.5), _obj("square", "red", 0.1, 0.5),
                         _obj("star", "blue", 0.3, 0.5)], of_two)[0]
    # and colour on all `count` of them
    two_red = {"tag": "color_attr", "include": [{"class": "circle", "count": 2, "color": "red"}]}
    assert evaluate([_obj("circle", "red", 0.2, 0.5), _obj("circle", "red", 0.8, 0.5)], two_red)[0]
    assert not evaluate([_obj("circle", "red", 0.2, 0.5), _obj("circle", "blue", 0.8, 0.5)], two_red)[0]


def test_scene_for_prompt_refuses_impossible_metadata():
    rng = np.random.default_rng(0)
    bad = [({"include": [{"class": "hexagon", "count": 1}]}, "unknown class"),
           ({"include": [{"class": "star", "count": 5}]}, "at most 4"),
           ({"include": [{"class": "star", "count": 0}]}, "positive integer"),
           ({"include": [{"class": "star", "count": 1, "position": ["left of", 0]}]}, "earlier clause"),
           ({"include": [{"class": "star", "count": 1, "color": "pink"}]}, "unknown colour")]
    for meta, message in bad:
        with pytest.raises(ValueError, match=message):
            render_prompt(meta, rng)


def test_robust_to_noise_and_blur(rendered):
    rng = np.random.default_rng(0)
    subset = rendered[::3]
    noisy = np.mean([score_image(gaussian_noise(im, 0.1, rng), m)["correct"] for _, m, im, _ in subset])
    blurred = np.mean([score_image(gaussian_blur(im, 1.0), m)["correct"] for _, m, im, _ in subset])
    print(f"\naccuracy under noise sigma=0.1: {noisy:.2%}, under blur sigma=1px: {blurred:.2%} (n={len(subset)})")
    assert noisy >= 0.95 and blurred >= 0.95


def test_robustness_benchmark_reports_accuracies():
    figures = robustness(sizes=(64,), per_tag=2)
    assert len(figures) == 9 and all(0.0 <= f.value <= 1.0 for f in figures)
    assert figures[0].value == 1.0 and all(f.reference_value == figures[0].value for f in figures[1:])


def _geneval_tree(root, prompts, images):
    for index, (meta, samples) in enumerate(zip(prompts, images)):
        folder = root / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        for j, image in enumerate(samples):
            image.save(folder / "samples" / f"{j:04d}.png")


def test_score_generations_reads_geneval_layout(tmp_path):
    rng = np.random.default_rng(1)
    prompts = [{"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a photo of a star"},
               {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}], "prompt": "a photo of a blue circle"}]
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    wrong, _ = render_prompt({"include": [{"class": "circle", "count": 1, "color": "red"}]}, rng, 64)
    images = [[render_prompt(prompts[0], rng, 64)[0]] * 2, [render_prompt(prompts[1], rng, 64)[0], wrong]]
    _geneval_tree(tmp_path / "images", prompts, images)
    result = score_generations(tmp_path / "images", metadata)
    assert result["categories"]["single_object"]["accuracy"] == 1.0
    assert result["categories"]["colors"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert result["overall"] == pytest.approx(0.75)  # mean over categories, not over images
    assert result["image_accuracy"] == pytest.approx(0.75) and result["prompt_accuracy"] == 1.0
    assert len(result["results"]) == 4 and json.loads(json.dumps(result)) == result
    table = format_scores(result)
    assert "colors" in table and "50.00%" in table and "75.00%" in table
    # a folder whose own metadata disagrees with the metadata file is refused
    (tmp_path / "images" / "00001" / "metadata.jsonl").write_text(json.dumps(prompts[0]) + "\n")
    with pytest.raises(ValueError, match="disagrees"):
        score_generations(tmp_path / "images", metadata)
    with pytest.raises(ValueError, match="no images"):
        score_generations(tmp_path, metadata)
    (tmp_path / "images" / "00001" / "metadata.jsonl").unlink()
    for sample in (tmp_path / "images" / "00001" / "samples").iterdir():  # an interrupted run: prompt 1 missing
        sample.unlink()
    with pytest.raises(ValueError, match=r"1 of the 2 prompts .* have no images .*00001"):
        score_generations(tmp_path / "images", metadata)


def test_scores_against_other_prompts_give_the_chance_level(tmp_path):
    rng = np.random.default_rng(2)
    prompts = [{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": c}],
                "prompt": f"a photo of a {c} circle"} for c in ("red", "blue", "green")]
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    following = [[render_prompt(p, rng, 64)[0]] for p in prompts]  # each image follows its own prompt
    _geneval_tree(tmp_path / "following", prompts, following)
    result = score_generations(tmp_path / "following", metadata)
    assert result["overall"] == 1.0
    assert score_against_other_prompts(result["results"])["overall"] == 0.0  # a red circle is no blue one
    blind = [following[0]] * 3  # the same red circle for every prompt
    _geneval_tree(tmp_path / "blind", prompts, blind)
    result = score_generations(tmp_path / "blind", metadata)
    assert result["overall"] == pytest.approx(1 / 3)
    assert score_against_other_prompts(result["results"])["overall"] == pytest.approx(1 / 3)  # chance, as own
