"""WISE writer (Niu et al. 2025; code PKU-YuanGroup/WISE).

Prompts: JSON files (``cultural_common_sense.json``, ``spatio-temporal_reasoning.json``,
``natural_science.json``), each a list of objects with ``prompt_id``, ``Prompt``, ``Explanation``,
``Subcategory``. ``gpt_eval.py`` reads ``<image_dir>/<prompt_id>.png``: one image per prompt, ids
unique over the three files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from hydra_umm.eval.benchmarks.generation import GenerationSettings, generate_images


def read_wise_prompts(json_files: Iterable[str | Path]) -> dict[int, str]:
    """{prompt_id: Prompt} over WISE's JSON files; a repeated id is an error."""
    prompts: dict[int, str] = {}
    for file in json_files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"WISE prompt file not found: {path}")
        for item in json.loads(path.read_text(encoding="utf-8")):
            if "prompt_id" not in item or "Prompt" not in item:
                raise ValueError(f"{path}: every WISE item needs 'prompt_id' and 'Prompt', got keys {sorted(item)}")
            if item["prompt_id"] in prompts:
                raise ValueError(f"{path}: prompt_id {item['prompt_id']} appears twice")
            prompts[item["prompt_id"]] = item["Prompt"]
    return prompts


def write_wise(
    pipeline: Any,
    json_files: Iterable[str | Path],
    out_dir: str | Path,
    settings: GenerationSettings = GenerationSettings(),
) -> Path:
    """Write ``<out_dir>/<prompt_id>.png`` for every WISE prompt; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for prompt_id, prompt in read_wise_prompts(json_files).items():
        (image,) = generate_images(pipeline, prompt, 1, settings)
        image.save(out / f"{prompt_id}.png")
    return out
