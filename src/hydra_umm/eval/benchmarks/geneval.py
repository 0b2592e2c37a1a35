"""GenEval writer (Ghosh et al. 2023; code djghosh13/geneval).

Layout, as ``generation/diffusers_generate.py`` writes it and ``evaluation/evaluate_images.py``
reads it::

    <out>/<index:05d>/metadata.jsonl      the prompt's metadata line, one JSON object (json.load-able)
    <out>/<index:05d>/samples/<j:05d>.png  n_samples images per prompt

``index`` is the line number (from 0) in the metadata JSONL; the evaluator keeps only all-digit
folder names and ``\\d+.png`` files, and needs ``prompt`` and ``tag`` in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra_umm.eval.benchmarks.generation import GenerationSettings, generate_images

REQUIRED_KEYS = ("prompt", "tag")


def read_geneval_metadata(metadata_file: str | Path) -> list[dict]:
    """GenEval prompt metadata: one JSON object per non-blank line, each with ``prompt`` and ``tag``."""
    path = Path(metadata_file)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file not found: {path}")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = [key for key in REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: GenEval metadata misses {missing}")
        records.append(record)
    return records


def write_geneval(
    pipeline: Any,
    metadata_file: str | Path,
    out_dir: str | Path,
    n_samples: int = 4,
    settings: GenerationSettings = GenerationSettings(),
) -> Path:
    """Generate ``n_samples`` images per GenEval prompt into ``out_dir``; returns ``out_dir``. Samples
    an earlier call left in a prompt's folder are removed first, so that none is scored with these."""
    out = Path(out_dir)
    for index, metadata in enumerate(read_geneval_metadata(metadata_file)):
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        for stale in (folder / "samples").glob("*.png"):
            stale.unlink()
        (folder / "metadata.jsonl").write_text(json.dumps(metadata), encoding="utf-8")
        for j, image in enumerate(generate_images(pipeline, metadata["prompt"], n_samples, settings)):
            image.save(folder / "samples" / f"{j:05d}.png")
    return out
