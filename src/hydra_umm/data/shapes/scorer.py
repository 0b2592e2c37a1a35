"""A deterministic GenEval-style scorer for the shapes world: objects are read back from pixels.

Detection (``detect``): the background is grey and every object is saturated, so
  1. the image is lightly smoothed (Gaussian, per channel) and its saturation max(RGB) - min(RGB)
     thresholded; connected components that reach a strong saturation somewhere and are not
     specks are objects;
  2. colour = the palette hue nearest to the hue of the component's most saturated pixels;
  3. per-pixel coverage alpha = saturation / the object's saturation (exact for anti-aliased
     edges on a grey background; both less the background's own saturation, which noise raises),
     over the component grown by a margin, from which come the shape descriptors: the magnitudes of the
     3rd, 4th and 5th angular harmonics of the coverage around its centroid (weighted by r^3;
     triangles, squares/crosses and stars light up one each, circles none) and the box fill
     ratio; the shape is the nearest prototype (each shape rendered once at 256 px) in L1
     distance between square roots, so that weak but present harmonics (blurred points) count;
  4. size from the coverage area; box from the alpha >= 0.5 mask.
Evidence (GenEval's detector keeps boxes above a confidence of 0.3; here a component must look
rendered, else pure noise or colour blobs, as an untrained generator draws, pass prompts by chance):
the image's background (pixels outside every component) and each object's own surroundings (a
ring just outside it) must be the world's light neutral grey, and an object must cover at least
half the smallest rendered object, its colour must lie near a palette colour in RGB, and most of
its pixels must be mixtures of that colour and the background grey.
Judging (``evaluate``) follows GenEval's ``evaluate`` rule for rule: an image is correct iff every
``include`` clause holds (count, colour of the first ``count`` objects of the class, position of
each against every object of the referenced clause) and no ``exclude`` clause is met. Objects of a
class are taken largest first (GenEval: most confident first). Summary as GenEval's: accuracy per
tag over images, overall = mean over tags.
"""

from __future__ import annotations

import colorsys
import functools
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from hydra_umm.data.shapes.prompts import TAGS
from hydra_umm.data.shapes.render import render, to_array
from hydra_umm.data.shapes.world import COLORS, SHAPES, SIZES, Scene, ShapeObject, relative_position

SMOOTH_SIGMA = 1.0  # pixels; tames pixel noise before the saturation threshold
MASK_SATURATION = 0.2  # a pixel belongs to some object above this smoothed saturation
SEED_SATURATION = 0.4  # an object must reach this somewhere (every palette colour is above 0.5)
BACKGROUND_LEVEL = 0.6  # the background grey is rendered at 0.8..0.95; darker is no shapes world
BACKGROUND_CHROMA = 0.08  # largest max - min of the background's median RGB (it is neutral grey)
PALETTE_DISTANCE = 0.25  # largest RGB distance of an object's colour from its palette colour
MIX_TOLERANCE = 0.15  # RGB distance within which a pixel counts as a palette/background mixture
MIX_FRACTION = 0.6  # smallest fraction of an object's pixels that must be such mixtures
HARMONICS = (3, 4, 5)
GROW = 2  # pixels added around a component before measuring its coverage
RING = 2  # width in pixels of the ring beyond GROW where an object's local background is read
NOISY_FLOOR = 0.1  # background saturation above which the image counts as noisy


class Located(Protocol):
    shape: str
    color: str

    @property
    def box(self) -> tuple[float, float, float, float]: ...


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]  # pixels, [x0, y0, x1, y1]
    area: float  # pixels (sum of coverage)


def descriptors(alpha: np.ndarray) -> np.ndarray:
    """Shape descriptors of one object's coverage map (H, W) in [0, 1]: |c_3|, |c_4|, |c_5| of
    the r^3-weighted angular harmonics about the centroid, and area / (soft width * soft height)."""
    ys, xs = np.nonzero(alpha > 0)
    w = alpha[ys, xs]
    dx, dy = xs - (w * xs).sum() / w.sum(), ys - (w * ys).sum() / w.sum()
    weight = w * (dx * dx + dy * dy) ** 1.5
    theta = np.arctan2(dy, dx)
    harmonics = [abs((weight * np.exp(1j * k * theta)).sum()) / weight.sum() for k in HARMONICS]
    fill = alpha.sum() / (alpha.max(axis=0).sum() * alpha.max(axis=1).sum())
    return np.array([*harmonics, fill])


@functools.cache
def prototypes() -> dict[str, tuple[np.ndarray, float]]:
    """Per shape: its descriptors and its area at radius 1, measured on a 256 px rendering."""
    side = 256
    out = {}
    for shape in SHAPES:
        obj = ShapeObject(shape, "red", "large", 0.5, 0.5)
        arr = to_array(render(Scene((obj,), background=0.9), side))
        sat = arr.max(2) - arr.min(2)
        alpha = np.clip(sat / sat.max(), 0.0, 1.0) * (sat > 0.05)
        out[shape] = (descriptors(alpha), alpha.sum() / (obj.radius * side) ** 2)
    return out


_RGB = {name: np.array(rgb) / 255 for name, rgb in COLORS.items()}
_HUES = {name: colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in _RGB.items()}


def nearest_color(rgb: Sequence[float]) -> str:
    """The palette colour nearest in hue to ``rgb`` (floats in [0, 1])."""
    hue = colorsys.rgb_to_hsv(*rgb)[0]
    return min(_HUES, key=lambda c: min(abs(_HUES[c] - hue), 1 - abs(_HUES[c] - hue)))


def is_world_grey(rgb: np.ndarray) -> bool:
    """Whether a (median) colour (3,) is the world's light, neutral background grey."""
    return bool(rgb.mean() >= BACKGROUND_LEVEL and rgb.max() - rgb.min() <= BACKGROUND_CHROMA)


def min_area() -> float:
    """Half the area of the smallest rendered object, as a fraction of the image."""
    return min(area for _, area in prototypes().values()) * SIZES["small"] ** 2 / 2


def mixture_fraction(pixels: np.ndarray, color: np.ndarray, grey: float) -> float:
    """Fraction of ``pixels`` (N, 3) within MIX_TOLERANCE of the segment from ``grey`` to ``color``:
    an anti-aliased rendering holds only such mixtures (plus whatever noise survives smoothing)."""
    start = np.full(3, grey)
    direction = color - start
    t = np.clip((pixels - start) @ direction / (direction @ direction), 0.0, 1.0)
    residual = np.linalg.norm(pixels - (start + t[:, None] * direction), axis=1)
    return float(np.mean(residual < MIX_TOLERANCE))


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """Objects found in an RGB image (PIL, or float (H, W, 3) in [0, 1]), largest first."""
    arr = to_array(image) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"expected pixel values in [0, 1], got [{arr.min():g}, {arr.max():g}] "
                         "(pass a PIL image or divide by 255)")
    height, width = arr.shape[:2]
    smooth = ndimage.gaussian_filter(arr, (SMOOTH_SIGMA, SMOOTH_SIGMA, 0))
    sat_smooth = smooth.max(2) - smooth.min(2)
    sat = arr.max(2) - arr.min(2)
    labels, n = ndimage.label(sat_smooth > MASK_SATURATION)
    if n == 0 or not (labels == 0).any():
        return []
    background = np.median(smooth[labels == 0], axis=0)
    if not is_world_grey(background):
        return []  # no shapes world can be read in this image
    index = np.arange(1, n + 1)
    peak = ndimage.maximum(sat_smooth, labels, index)
    count = ndimage.sum(np.ones_like(sat), labels, index)
    protos = prototypes()
    keep = (peak >= SEED_SATURATION) & (count >= min_area() * height * width)
    found = []
    for i, window in zip(index, ndimage.find_objects(labels)):
        if not keep[i - 1]:
            continue
        window = tuple(slice(max(w.start - GROW, 0), w.stop + GROW) for w in window)
        component = labels[window] == i
        s_smooth = sat_smooth[window]
        core = component & (s_smooth >= np.quantile(s_smooth[component], 0.7))
        rgb = np.median(smooth[window][core], axis=0)
        color = nearest_color(rgb)
        outer = tuple(slice(max(w.start - RING, 0), w.stop + RING) for w in window)
        own = labels[outer] == i
        ring = ndimage.binary_dilation(own, iterations=GROW + RING) & ~ndimage.binary_dilation(own, iterations=GROW)
        if (not ring.any() or not is_world_grey(np.median(smooth[outer][ring], axis=0))
                or np.linalg.norm(rgb - _RGB[color]) > PALETTE_DISTANCE
                or mixture_fraction(smooth[window][component], _RGB[color], background.mean()) < MIX_FRACTION):
            continue
        # coverage is measured on the component grown by GROW pixels (never into another object),
        # which catches faint blurred edges; on a noisy background (high saturation floor) by one
        grown = ndimage.binary_dilation(component, iterations=GROW)
        floor = float(np.median(sat[window][~grown])) if (~grown).any() else 0.0
        region = (grown if floor < NOISY_FLOOR else ndimage.binary_dilation(component)) & np.isin(labels[window], (0, i))
        alpha = np.clip((sat[window] - floor) / max(rgb.max() - rgb.min() - floor, 1e-6), 0.0, 1.0) * region
        d = descriptors(alpha)
        shape = min(protos, key=lambda s: float(np.abs(np.sqrt(protos[s][0]) - np.sqrt(d)).sum()))
        area = float(alpha.sum())
        radius = np.sqrt(area / protos[shape][1]) / min(height, width)
        ys, xs = np.nonzero(alpha >= 0.5)
        if len(xs) == 0:
            continue
        x0, y0 = window[1].start, window[0].start
        box = (float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1))
        size = "large" if radius > np.sqrt(SIZES["small"] * SIZES["large"]) else "small"
        found.append(Detection(shape, color, size, box, area))
    return sorted(found, key=lambda o: -o.area)


def evaluate(objects: Sequence[Located], metadata: Mapping) -> tuple[bool, str]:
    """GenEval's judgement of one image: ``objects`` (most confident first, each with ``shape``,
    ``color`` and ``box``) against GenEval-style ``metadata``. Returns (correct, reason)."""
    by_class: dict[str, list[Located]] = defaultdict(list)
    for o in objects:
        by_class[o.shape].append(o)
    correct, reasons, matched_groups = True, [], []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = by_class.get(cls, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [o.color for o in found]
                if colors.count(req["color"]) < count:
                    matched = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {', '.join(colors)}")
            if "position" in req and matched:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    for o in found:
                        bad = [t for t in matched_groups[target] if relation not in relative_position(o.box, t.box)]
                        if bad:
                            true_rel = relative_position(o.box, bad[0].box)
                            matched = False
                            found_rel = " and ".join(sorted(true_rel)) or "no relation"
                            reasons.append(f"expected {cls} {relation} target, found {found_rel}")
                            break
        correct &= matched
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls = req["class"]
        if len(by_class.get(cls, [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {cls}<{req['count']}, found {len(by_class[cls])}")
    return correct, "\n".join(reasons)


def score_image(image: Image.Image | np.ndarray, metadata: Mapping) -> dict:
    """Detect objects in ``image`` and judge them against ``metadata``."""
    objects = detect(image)
    correct, reason = evaluate(objects, metadata)
    return {"correct": correct, "reason": reason, "detected": [{**asdict(o), "box": list(o.box)} for o in objects]}


def summarize(results: Sequence[Mapping]) -> dict:
    """GenEval's summary of per-image results (each with ``tag``, ``prompt``, ``correct``):
    accuracy per tag over images, overall = mean over the tags present."""
    per_tag: dict[str, list[bool]] = defaultdict(list)
    per_prompt: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per_tag[r["tag"]].append(bool(r["correct"]))
        per_prompt[json.dumps(r["metadata"], sort_keys=True)].append(bool(r["correct"]))
    order = [t for t in TAGS if t in per_tag] + sorted(set(per_tag) - set(TAGS))
    categories = {t: {"accuracy": float(np.mean(per_tag[t])), "correct": int(sum(per_tag[t])), "total": len(per_tag[t])}
                  for t in order}
    return {
        "overall": float(np.mean([c["accuracy"] for c in categories.values()])) if categories else 0.0,
        "categories": categories,
        "images": len(results),
        "prompts": len(per_prompt),
        "image_accuracy": float(np.mean([r["correct"] for r in results])) if results else 0.0,
        "prompt_accuracy": float(np.mean([any(v) for v in per_prompt.values()])) if per_prompt else 0.0,
    }


def read_metadata(path: str | Path) -> list[dict]:
    """GenEval-style metadata: one JSON object per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                meta = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(meta, dict) or "tag" not in meta or "include" not in meta:
                raise ValueError(f"{path}:{lineno}: a metadata record needs 'tag' and 'include'")
            out.append(meta)
    return out


def score_generations(images_dir: str | Path, metadata_file: str | Path) -> dict:
    """Score images in GenEval's layout, ``<images>/<index:05d>/samples/<NNNN>.png``; folder
    ``index`` belongs to line ``index`` of ``metadata_file`` (a ``metadata.jsonl`` inside the
    folder, when present, must agree with it); every line needs images. Returns the summary plus
    ``results`` per image."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    metadata = read_metadata(metadata_file)
    results = []
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        index = int(folder.name)
        if index >= len(metadata):
            raise ValueError(f"{folder}: index {index} but {metadata_file} has {len(metadata)} prompts")
        meta = metadata[index]
        local = folder / "metadata.jsonl"
        if local.is_file() and json.loads(local.read_text().splitlines()[0]) != meta:
            raise ValueError(f"{local} disagrees with line {index} of {metadata_file}")
        samples = folder / "samples"
        for path in sorted(samples.glob("*.png")) if samples.is_dir() else []:
            if re.fullmatch(r"\d+\.png", path.name):
                with Image.open(path) as image:
                    result = score_image(image.convert("RGB"), meta)
                results.append({"filename": str(path), "tag": meta["tag"], "prompt": meta.get("prompt", ""),
                                "metadata": meta, **result})
    if not results:
        raise ValueError(f"no images in GenEval's layout (<index>/samples/<NNNN>.png) under {images_dir}")
    scored = {int(Path(r["filename"]).parent.parent.name) for r in results}
    unscored = [i for i in range(len(metadata)) if i not in scored]
    if unscored:
        raise ValueError(f"{len(unscored)} of the {len(metadata)} prompts of {metadata_file} have no images under "
                         f"{images_dir} (folders {', '.join(f'{i:05d}' for i in unscored[:5])}"
                         f"{', ...' if len(unscored) > 5 else ''}): an incomplete generation run")
    return {**summarize(results), "results": results}


def score_against_other_prompts(results: Sequence[Mapping]) -> dict:
    """The chance level of ``results`` (per-image results of :func:`score_generations`, with their
    detections): every image's objects judged against the next prompt of its own tag (cyclically, in
    order of first appearance) instead of its own, summarised as GenEval's. A generator that ignores
    its prompts scores as much here as on its own prompts; one that follows them scores less. A tag
    with one prompt is judged against it."""
    prompts: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["metadata"] not in prompts[r["tag"]]:
            prompts[r["tag"]].append(r["metadata"])
    rescored = []
    for r in results:
        own = prompts[r["tag"]]
        other = own[(own.index(r["metadata"]) + 1) % len(own)]
        objects = [Detection(**{**d, "box": tuple(d["box"])}) for d in r["detected"]]  # as score_image found them
        correct, _ = evaluate(objects, other)
        rescored.append({"tag": r["tag"], "metadata": other, "correct": correct})
    return summarize(rescored)


def format_scores(result: Mapping) -> str:
    """A small table: accuracy per category, then the overall score."""
    lines = [f"{'category':<16} {'accuracy':>9} {'correct':>9}"]
    for tag, c in result["categories"].items():
        lines.append(f"{tag:<16} {c['accuracy']:9.2%} {c['correct']:>4}/{c['total']:<4}")
    lines.append(f"{'overall':<16} {result['overall']:9.2%}   (mean over categories)")
    lines.append(f"{result['images']} images, {result['prompts']} prompts; "
                 f"image accuracy {result['image_accuracy']:.2%}, prompt accuracy {result['prompt_accuracy']:.2%}")
    return "\n".join(lines)
