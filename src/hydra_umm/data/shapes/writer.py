"""Writing a shapes-world data set: images, JSONL manifests per split, and evaluation prompts.

Layout under ``out``::

    images/<id>.png                         the rendered scenes
    train.jsonl, val.jsonl, test.jsonl      manifests (see hydra_umm.data.manifest); no scene is shared
    heldout.jsonl                           scenes holding a held-out colour-shape pair (HELDOUT_PAIRS)
    evaluation_metadata.jsonl               GenEval-style prompts over the seen compositions
    evaluation_metadata_heldout.jsonl       colors / color_attr prompts naming held-out pairs
    generation_prompts.txt                  the prompts of evaluation_metadata.jsonl, one a line
    reference/<index:05d>/samples/0000.png  one ground-truth rendering per prompt, GenEval's layout
    reference_heldout/...                   the same for evaluation_metadata_heldout.jsonl
    request.json                            the settings asked for, written first
    summary.json                            what was written, written last

Train, val and test scenes never contain a held-out pair, neither does any caption or question
of theirs mention one. A data set is written only into a new or empty folder, or over a data set of
the same settings (:func:`claim_folder`), so nothing else is overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hydra_umm.data.manifest import write_manifest
from hydra_umm.data.shapes.captions import caption
from hydra_umm.data.shapes.prompts import generate_prompts, heldout_prompts, render_prompt
from hydra_umm.data.shapes.questions import questions
from hydra_umm.data.shapes.render import render
from hydra_umm.data.shapes.world import HELDOUT_PAIRS, Scene, sample_scene

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.05, "test": 0.05, "heldout": 0.1}


def split_sizes(n: int) -> dict[str, int]:
    """Scenes per split for ``n`` scenes in all: every split gets at least one."""
    if n < len(SPLIT_FRACTIONS):
        raise ValueError(f"need at least {len(SPLIT_FRACTIONS)} scenes (one per split), got n={n}")
    sizes = {k: max(1, round(f * n)) for k, f in SPLIT_FRACTIONS.items() if k != "train"}
    sizes["train"] = n - sum(sizes.values())
    if sizes["train"] < 1:
        raise ValueError(f"n={n} leaves no training scene")
    return {"train": sizes["train"], **{k: sizes[k] for k in ("val", "test", "heldout")}}


def sample_splits(n: int, rng: np.random.Generator) -> dict[str, list[Scene]]:
    """Distinct scenes per split: train/val/test without held-out pairs, heldout with one each."""
    sizes = split_sizes(n)
    seen_keys: set = set()

    def draw(count: int, **kw) -> list[Scene]:
        out = []
        while len(out) < count:
            scene = sample_scene(rng, **kw)
            if scene.key() not in seen_keys:
                seen_keys.add(scene.key())
                out.append(scene)
        return out

    seen = draw(sizes["train"] + sizes["val"] + sizes["test"], exclude_pairs=HELDOUT_PAIRS)
    heldout = []
    for i in range(sizes["heldout"]):
        heldout += draw(1, require_pair=HELDOUT_PAIRS[i % len(HELDOUT_PAIRS)])
    a, b = sizes["train"], sizes["train"] + sizes["val"]
    return {"train": seen[:a], "val": seen[a:b], "test": seen[b:], "heldout": heldout}


def indexed_splits(n: int, seed: int) -> dict[str, list[tuple[int, Scene]]]:
    """``sample_splits`` for ``seed`` with each scene's global index (the numbering of the files)."""
    splits = sample_splits(n, np.random.default_rng([seed, 0]))
    out, index = {}, 0
    for split, scenes in splits.items():
        out[split] = list(enumerate(scenes, start=index))
        index += len(scenes)
    return out


def scene_record(scene: Scene, split: str, index: int, seed: int, size: int) -> dict:
    """The manifest record of scene number ``index``, without its image: id, caption, questions
    (seeded by ``(seed, index)`` alone, so independent of the other records), scene and split."""
    rng = np.random.default_rng([seed, index])
    unseen = () if split == "heldout" else HELDOUT_PAIRS
    return {"id": f"{split}-{index:06d}", "caption": caption(scene, rng),
            "qa": questions(scene, rng, unseen_pairs=unseen), "scene": {**scene.to_dict(), "image_size": size},
            "split": split}


def write_reference(folder: Path, prompts: list[dict], rng: np.random.Generator, size: int) -> None:
    """One ground-truth rendering per prompt in GenEval's layout (``<index:05d>/samples/0000.png``
    beside ``<index:05d>/metadata.jsonl``): what a perfect generator would produce; objects the
    prompt leaves free never form a held-out pair."""
    for index, meta in enumerate(prompts):
        sub = folder / f"{index:05d}"
        (sub / "samples").mkdir(parents=True, exist_ok=True)
        (sub / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        render_prompt(meta, rng, size, exclude_pairs=HELDOUT_PAIRS)[0].save(sub / "samples" / "0000.png")


def write_prompts(out: Path, seed: int, size: int, per_tag: int) -> dict[str, int]:
    """The GenEval-style prompt files and their reference renderings."""
    rng = np.random.default_rng([seed, 1])
    prompts = generate_prompts(rng, per_tag, exclude_pairs=HELDOUT_PAIRS)
    held = heldout_prompts(HELDOUT_PAIRS, rng)
    (out / "evaluation_metadata.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (out / "evaluation_metadata_heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in held))
    (out / "generation_prompts.txt").write_text("".join(p["prompt"] + "\n" for p in prompts))
    write_reference(out / "reference", prompts, rng, size)
    write_reference(out / "reference_heldout", held, rng, size)
    return {"prompts": len(prompts), "heldout_prompts": len(held)}


REQUEST_FILE, SUMMARY_FILE = "request.json", "summary.json"


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={sum(v.values()) if isinstance(v, dict) else v}" for k, v in settings.items())


def _held_settings(out: Path, keys) -> dict:
    """The settings (of ``keys``) of the data set in ``out``, from its ``request.json`` or, for one
    written before those existed, its ``summary.json``; {} when it has neither."""
    for path in (out / REQUEST_FILE, out / SUMMARY_FILE):
        if path.is_file():
            try:
                held = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path} is unreadable ({e}): remove {out} or choose another folder") from None
            return {k: held[k] for k in keys if k in held} if isinstance(held, dict) else {}
    return {}


def claim_folder(out: Path, request: dict, reuse: bool = False) -> dict | None:
    """Make ``out`` the folder of the data set of ``request`` (its writer's settings, as its summary
    records them) without overwriting anything else. A missing or empty folder is claimed by writing
    ``request.json`` first (so that an interrupted write can be redone); a folder that holds a data
    set of the same request is written again, or with ``reuse`` its summary is returned when it was
    finished. Returns None when the data set is to be written (its ``summary.json``, written last,
    is removed till then). Raises ValueError naming what else ``out`` is or holds: a file, another
    data set, other files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: give a new or empty folder for the data set")
    held = _held_settings(out, request)
    if not held and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no shapes data set of this kind: "
                         "remove what is there or choose another folder")
    if held and held != request:
        raise ValueError(f"{out} already holds another shapes data set ({_describe(held)}; asked for "
                         f"{_describe(request)}): remove it or choose another folder")
    summary = out / SUMMARY_FILE
    if reuse and summary.is_file():
        return json.loads(summary.read_text())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot make the folder {out}: {e.strerror}") from None
    summary.unlink(missing_ok=True)
    (out / REQUEST_FILE).write_text(json.dumps(request, indent=2) + "\n")
    return None


def make_dataset(out: str | Path, n: int = 1000, size: int = 64, seed: int = 0, prompts_per_tag: int = 50) -> dict:
    """Render ``n`` scenes of ``size`` px into ``out`` with their manifests and evaluation prompts
    (deterministic given ``seed``). Returns a summary (also written to ``summary.json``). ``out`` must
    be new, empty or hold a data set of the same settings (:func:`claim_folder`; ValueError else)."""
    split_sizes(n)  # reject a bad n or size before any work
    render(Scene(()), size)
    out = Path(out)
    request = {"scenes": split_sizes(n), "size": size, "seed": seed, "prompts_per_tag": prompts_per_tag}
    claim_folder(out, request)
    images = out / "images"
    images.mkdir(exist_ok=True)
    splits = indexed_splits(n, seed)
    manifests = {}
    progress = tqdm(total=n, desc="shapes", unit="img", disable=n < 500)
    for split, scenes in splits.items():
        records = []
        for index, scene in scenes:
            record = scene_record(scene, split, index, seed, size)
            path = images / f"{record['id']}.png"
            render(scene, size).save(path)
            records.append({"id": record["id"], "image": str(path.relative_to(out)), **record})
            progress.update()
        manifests[split] = str(write_manifest(records, out / f"{split}.jsonl"))
    progress.close()
    summary = {
        "out": str(out), **request,
        "manifests": manifests,
        "heldout_pairs": [f"{c} {s}" for c, s in HELDOUT_PAIRS],
        **write_prompts(out, seed, size, prompts_per_tag),
        "metadata": str(out / "evaluation_metadata.jsonl"),
        "metadata_heldout": str(out / "evaluation_metadata_heldout.jsonl"),
        "reference_images": str(out / "reference"),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
