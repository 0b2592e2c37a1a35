"""A conversation about one image as the model's single question, and its answer as text deltas.

HYDRA answers one question about one image (``HydraPipeline.answer``). A multi-turn chat is given
to it as the turns' texts, oldest first, one a line, with the oldest turns dropped until the
prompt fits the model's ``umm.max_text_len`` tokens (the model keeps a prompt's first tokens, so
the newest question must fit); a one-turn chat is exactly the question.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from transformers import PreTrainedTokenizerBase


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


def text_deltas(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Iterator[str]:
    """The decoded text of ``ids`` as it grows token by token; a delta is held back while it ends
    in an incomplete UTF-8 sequence (byte-level tokens), so the deltas join to the full text."""
    shown = ""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if text.endswith("\ufffd") and n < len(ids):
            continue
        if len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown) :]
            shown = text
