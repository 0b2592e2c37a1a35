"""The shapes world (DESIGN section 6): rendered coloured shapes with captions, questions and
GenEval-style prompts, and a deterministic scorer that reads the objects back from pixels; in motion,
seeded clips with their captions, questions and a tracker (``motion``)."""

from hydra_umm.data.shapes.captions import caption
from hydra_umm.data.shapes.motion import (Clip, MovingObject, check_clip, clip_caption, clip_metadata, clip_questions,
                                          clip_records, make_clip_dataset, render_clip, sample_clip, track)
from hydra_umm.data.shapes.prompts import TAGS, generate_prompts, heldout_prompts, render_prompt, scene_for_prompt
from hydra_umm.data.shapes.questions import questions
from hydra_umm.data.shapes.render import render
from hydra_umm.data.shapes.robustness import gaussian_blur, gaussian_noise
from hydra_umm.data.shapes.scorer import (Detection, detect, evaluate, format_scores, score_against_other_prompts,
                                          score_generations, score_image, summarize)
from hydra_umm.data.shapes.world import (COLORS, HELDOUT_PAIRS, SHAPES, SIZES, Scene, ShapeObject, relative_position,
                                         sample_scene)
from hydra_umm.data.shapes.writer import make_dataset

__all__ = [
    "COLORS", "Detection", "HELDOUT_PAIRS", "SHAPES", "SIZES", "Scene", "ShapeObject", "TAGS", "caption", "detect",
    "evaluate", "format_scores", "gaussian_blur", "gaussian_noise", "generate_prompts", "heldout_prompts",
    "make_dataset", "questions", "relative_position", "render", "render_prompt", "sample_scene", "scene_for_prompt",
    "score_against_other_prompts", "score_generations", "score_image", "summarize",
    "Clip", "MovingObject", "check_clip", "clip_caption", "clip_metadata", "clip_questions", "clip_records",
    "make_clip_dataset", "render_clip", "sample_clip", "track",
]
