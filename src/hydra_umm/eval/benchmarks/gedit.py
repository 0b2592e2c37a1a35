"""GEdit-Bench writer (Liu et al. 2025, Step1X-Edit; data stepfun-ai/GEdit-Bench).

Input: the benchmark's records as a local JSON list or JSONL (the Hugging Face data set exported,
nothing is downloaded), each with ``key``, ``task_type``, ``instruction``,
``instruction_language`` ("en" | "cn") and ``input_image`` (a path relative to the file). Output, as
GEdit's VIEScore evaluation reads it::

    <out>/fullset/<task_type>/<language>/<key>.png          the edited image
    <out>/fullset/<task_type>/<language>/<key>_SRCIMG.png   the source image beside it
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra_umm.data.datasets import load_image
from hydra_umm.eval.benchmarks.generation import EditSettings, edit_images

REQUIRED_KEYS = ("key", "task_type", "instruction", "instruction_language", "input_image")


def read_gedit(records_file: str | Path) -> list[dict]:
    """GEdit-Bench records from a JSON list or JSONL file, each with every key of REQUIRED_KEYS."""
    path = Path(records_file)
    if not path.is_file():
        raise FileNotFoundError(f"GEdit-Bench records not found: {path}")
    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()
                                                                if line.strip()]
    for i, record in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}: record {i} misses {missing}")
    return records


def write_gedit(pipeline: Any, records_file: str | Path, out_dir: str | Path, language: str | None = None,
                settings: EditSettings = EditSettings()) -> Path:
    """Edit every record's source image (of ``language`` only, when given) into GEdit's layout under
    ``out_dir``; returns ``out_dir``."""
    root = Path(records_file).parent
    for record in read_gedit(records_file):
        lang = record["instruction_language"]
        if language is not None and lang != language:
            continue
        folder = Path(out_dir) / "fullset" / record["task_type"] / lang
        folder.mkdir(parents=True, exist_ok=True)
        source = load_image(root / record["input_image"])
        (edited,) = edit_images(pipeline, [source], [record["instruction"]], settings)
        edited.save(folder / f"{record['key']}.png")
        source.save(folder / f"{record['key']}_SRCIMG.png")
    return Path(out_dir)
