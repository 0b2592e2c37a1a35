"""Benchmark writers and in-process evaluators.

Writers run a pipeline's ``generate(prompts, steps=, cfg_scale=, sampler=, seed=) -> list[PIL.Image]``
(``edit``, ``generate_video`` for HYDRA-X) over a benchmark's prompt files and lay the outputs out
exactly as that benchmark's own evaluator reads them (GenEval, DPG-Bench, WISE; ImgEdit, GEdit-Bench;
VBench); scoring with their detectors / VQA models / GPT judges stays outside. The shapes world is
scored in-process (``shapes_geneval``, ``shapes_vqa``, ``shapes_edit``).
"""

from hydra_umm.eval.benchmarks.dpg import write_dpg
from hydra_umm.eval.benchmarks.gedit import write_gedit
from hydra_umm.eval.benchmarks.generation import EditSettings, GenerationSettings, edit_images, generate_images
from hydra_umm.eval.benchmarks.geneval import read_geneval_metadata, write_geneval
from hydra_umm.eval.benchmarks.imgedit import write_imgedit
from hydra_umm.eval.benchmarks.shapes_edit import evaluate_shapes_edit
from hydra_umm.eval.benchmarks.shapes_geneval import evaluate_shapes_geneval
from hydra_umm.eval.benchmarks.shapes_vqa import evaluate_shapes_vqa
from hydra_umm.eval.benchmarks.vbench import write_vbench
from hydra_umm.eval.benchmarks.wise import write_wise

__all__ = [
    "GenerationSettings",
    "generate_images",
    "EditSettings",
    "edit_images",
    "write_imgedit",
    "write_gedit",
    "write_vbench",
    "evaluate_shapes_edit",
    "write_geneval",
    "read_geneval_metadata",
    "write_dpg",
    "write_wise",
    "evaluate_shapes_geneval",
    "evaluate_shapes_vqa",
]
