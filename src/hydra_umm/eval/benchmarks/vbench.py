"""VBench writer (Huang et al. 2024; code Vchitect/VBench).

Input: ``VBench_full_info.json`` (a list of records with ``prompt_en``) or a text file of prompts,
one per line. Output: ``<out>/<prompt>-<i>.mp4``, ``videos_per_prompt`` (VBench: 5) clips per
prompt, sampled with seeds seed, seed + 1, ..., as VBench's evaluation reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra_umm.data.video import write_clip
from hydra_umm.eval.benchmarks.generation import GenerationSettings

VIDEOS_PER_PROMPT = 5


def read_vbench_prompts(prompts_file: str | Path) -> list[str]:
    """The prompts of ``VBench_full_info.json`` (``prompt_en`` of each record) or of a text file."""
    path = Path(prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"VBench prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    records = json.loads(text)
    missing = [i for i, r in enumerate(records) if "prompt_en" not in r]
    if missing:
        raise ValueError(f"{path}: records {missing[:5]} have no 'prompt_en'")
    return [r["prompt_en"] for r in records]


def write_vbench(pipeline: Any, prompts_file: str | Path, out_dir: str | Path, frames: int = 17,
                 videos_per_prompt: int = VIDEOS_PER_PROMPT, settings: GenerationSettings = GenerationSettings()) -> Path:
    """``videos_per_prompt`` clips of ``frames`` frames per prompt into ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = settings.seed or 0
    for prompt in read_vbench_prompts(prompts_file):
        for i in range(videos_per_prompt):
            (clip,) = pipeline.generate_video([prompt], frames=frames, steps=settings.steps, cfg_scale=settings.cfg_scale,
                                              sampler=settings.sampler, seed=seed + i)
            write_clip(clip, out / f"{prompt}-{i}.mp4")
    return out
