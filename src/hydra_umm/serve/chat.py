"""A conversation about one image as the model's single question, and its answer as text deltas.

HYDRA answers one question about one image (``HydraPipeline.answer``). A multi-turn chat is given
to it as the turns' texts, oldest first, one a line, with the oldest turns dropped until the
prompt fits the model's ``umm.max_text_len`` tokens (the model keeps a prompt's first tokens, so
the newest question must fit); a one-turn chat is exactly the question.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

from PIL import Image
from transformers import PreTrainedTokenizerBase

from hydra_umm.inference import HydraPipeline
from hydra_umm.serve.queue import ModelQueue


def conversation_prompt(turns: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> str:
    """The newest turns that fit in ``max_tokens`` tokens, one a line (always at least the last)."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    kept = [turns[-1]]
    for turn in reversed(turns[:-1]):
        candidate = [turn, *kept]
        if len(tokenizer("\n".join(candidate), add_special_tokens=False).input_ids) > max_tokens:
            break
        kept = candidate
    return "\n".join(kept)


def text_deltas(ids: Iterable[int], tokenizer: PreTrainedTokenizerBase) -> Iterator[str]:
    """The decoded text of ``ids`` (a list, or token ids as a model produces them) as it grows
    token by token; a delta is held back while it ends in an incomplete UTF-8 sequence (byte-level
    tokens), so the deltas join to the full text."""
    shown, seen = "", []
    for token in ids:
        seen.append(token)
        text = tokenizer.decode(seen, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown) :]
            shown = text
    text = tokenizer.decode(seen, skip_special_tokens=True)
    if len(text) > len(shown) and text.startswith(shown):
        yield text[len(shown) :]


def answer_stream(queue: ModelQueue, pipe: HydraPipeline, image: Image.Image, prompt: str, max_new_tokens: int,
                  temperature: float, seed: int) -> Iterator[int]:
    """The answer's token ids (eos left out) as the model decodes them, through the model queue;
    raises QueueFull at once when the queue is full."""
    eos = pipe.model.ids["eos"]

    def job(emit: Callable[[int], None]) -> None:
        pipe.answer_ids([image], [prompt], max_new_tokens, temperature, seed, on_token=lambda t: emit(int(t[0])))

    return (token for token in queue.stream(job) if token != eos)
