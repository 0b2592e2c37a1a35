"""ImgEdit writer (Ye et al. 2025; code PKU-YuanGroup/ImgEdit, ``Benchmark/Basic``).

Input: ``basic_edit.json``, a JSON object ``{key: {"id": <source image path relative to the
images folder>, "prompt": <instruction>, "edit_type": <kind>}}``. Output: ``<out>/<key>.png``, one
edited image per key, which ImgEdit's GPT-based scorer reads beside the annotation file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra_umm.data.datasets import load_image
from hydra_umm.eval.benchmarks.generation import EditSettings, edit_images

REQUIRED_KEYS = ("id", "prompt")


def read_imgedit(annotations: str | Path) -> dict[str, dict]:
    """``basic_edit.json``: key -> record with ``id`` (the source image) and ``prompt`` (the instruction)."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"ImgEdit annotation file not found: {path}")
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, dict):
        raise ValueError(f"{path}: ImgEdit's basic_edit.json is a JSON object of key -> record")
    for key, record in records.items():
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}: record {key!r} misses {missing}")
    return records


def write_imgedit(pipeline: Any, annotations: str | Path, images_dir: str | Path, out_dir: str | Path,
                  settings: EditSettings = EditSettings()) -> Path:
    """Edit every source image of ``annotations`` (read from ``images_dir``) as its prompt says, into
    ``out_dir/<key>.png``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, record in read_imgedit(annotations).items():
        (edited,) = edit_images(pipeline, [load_image(Path(images_dir) / record["id"])], [record["prompt"]], settings)
        edited.save(out / f"{key}.png")
    return out
