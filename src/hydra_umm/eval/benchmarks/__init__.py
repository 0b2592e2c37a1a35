"""Benchmark writers and in-process evaluators.

Writers run a pipeline's ``generate(prompts, steps=, cfg_scale=, sampler=, seed=) -> list[PIL.Image]``
over a benchmark's prompt files and lay the images out exactly as that benchmark's own evaluator
reads them (GenEval, DPG-Bench, WISE); scoring with their detectors / VQA models stays outside.
The shapes world is scored in-process (``shapes_geneval``, ``shapes_vqa``).
"""

from hydra_umm.eval.benchmarks.dpg import write_dpg
from hydra_umm.eval.benchmarks.generation import GenerationSettings, generate_images
from hydra_umm.eval.benchmarks.geneval import read_geneval_metadata, write_geneval
from hydra_umm.eval.benchmarks.shapes_geneval import evaluate_shapes_geneval
from hydra_umm.eval.benchmarks.shapes_vqa import evaluate_shapes_vqa
from hydra_umm.eval.benchmarks.wise import write_wise

__all__ = [
    "GenerationSettings",
    "generate_images",
    "write_geneval",
    "read_geneval_metadata",
    "write_dpg",
    "write_wise",
    "evaluate_shapes_geneval",
    "evaluate_shapes_vqa",
]
