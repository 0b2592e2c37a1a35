"""What a loaded pipeline can do, read from the pipeline itself: a task is offered (a page tab, an
API route) exactly when the pipeline has the method that performs it, and the clip tasks (editing,
video) only when its model reads clips (HYDRA-X). A HydraPipeline offers the first three tasks
below, a HYDRA-X one all five; a TokenizerPipeline (HYDRA-TOK alone) only reconstruction."""

from __future__ import annotations

# task -> the pipeline method that performs it, in the page's tab order
TASKS = {
    "generate": "generate",  # text -> images
    "understand": "answer_ids",  # image + question -> answer tokens
    "reconstruct": "reconstruct",  # image -> HYDRA-TOK round trip
    "edit": "edit",  # image + instruction -> edited image
    "video": "generate_video",  # text -> clip
}
CLIP_TASKS = ("edit", "video")


def capabilities(pipe: object) -> tuple[str, ...]:
    """The tasks of :data:`TASKS` that ``pipe`` implements, in order."""
    clips = bool(getattr(pipe, "reads_clips", False))
    return tuple(task for task, method in TASKS.items()
                 if callable(getattr(pipe, method, None)) and (clips or task not in CLIP_TASKS))
