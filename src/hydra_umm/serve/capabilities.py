"""What a loaded pipeline can do, read from the pipeline itself: a task is offered (a page tab, an
API route) exactly when the pipeline has the method that performs it. A HydraPipeline offers all
three tasks below; a TokenizerPipeline (HYDRA-TOK alone) only reconstruction. HYDRA-X's editing and
video tasks join this table, with a tab each, when a pipeline implements them."""

from __future__ import annotations

# task -> the pipeline method that performs it, in the page's tab order
TASKS = {
    "generate": "generate",  # text -> images
    "understand": "answer_ids",  # image + question -> answer tokens
    "reconstruct": "reconstruct",  # image -> HYDRA-TOK round trip
}


def capabilities(pipe: object) -> tuple[str, ...]:
    """The tasks of :data:`TASKS` that ``pipe`` implements, in order."""
    return tuple(task for task, method in TASKS.items() if callable(getattr(pipe, method, None)))
