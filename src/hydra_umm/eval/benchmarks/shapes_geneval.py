"""Shapes-world GenEval: write the shapes-world GenEval-style prompts with the GenEval writer, then
score them in-process with the shapes world's deterministic scorer (no detector weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from hydra_umm.data.shapes import score_generations, score_image
from hydra_umm.eval.benchmarks.generation import GenerationSettings
from hydra_umm.eval.benchmarks.geneval import write_geneval

Scorer = Callable[[Path, Path], Any]


def score_shapes_image(image: Any, metadata: dict) -> float:
    """1.0 when the shapes scorer judges ``image`` (PIL) to satisfy the GenEval-style ``metadata``, else 0.0
    (the per-image scorer of :func:`hydra_umm.eval.report.report_run`)."""
    return float(score_image(image, metadata)["correct"])


def evaluate_shapes_geneval(
    pipeline: Any,
    metadata_file: str | Path,
    out_dir: str | Path,
    n_samples: int = 4,
    settings: GenerationSettings = GenerationSettings(),
    scorer: Scorer | None = None,
) -> Any:
    """Generate into GenEval's layout under ``out_dir`` and return the scorer's result for it
    (default: the shapes world's deterministic scorer)."""
    score = scorer or score_generations
    images_dir = write_geneval(pipeline, metadata_file, out_dir, n_samples=n_samples, settings=settings)
    return score(images_dir, Path(metadata_file))
