"""A conversation as one question, and answers as text deltas."""

import pytest

from hydra_umm.serve.chat import conversation_prompt, text_deltas


def test_one_turn_is_the_question_and_old_turns_are_dropped_to_fit(pipe):
    tok = pipe.model.text_tokenizer
    assert conversation_prompt(["how many?"], tok, 64) == "how many?"
    turns = ["what colour is the square?", "red", "how many?"]
    assert conversation_prompt(turns, tok, 64) == "what colour is the square?\nred\nhow many?"
    budget = len(tok("red\nhow many?", add_special_tokens=False).input_ids)
    assert conversation_prompt(turns, tok, budget) == "red\nhow many?"
    assert conversation_prompt(turns, tok, 1) == "how many?"  # the newest question always stays
    with pytest.raises(ValueError, match="at least one turn"):
        conversation_prompt([], tok, 64)


def test_text_deltas_join_to_the_decoded_text_including_multibyte_characters(pipe):
    tok = pipe.model.text_tokenizer
    ids = tok("a red ünicode square ✓", add_special_tokens=False).input_ids
    deltas = list(text_deltas(ids, tok))
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == "a red ünicode square ✓"
    assert len(deltas) > 3 and all(deltas) and "\ufffd" not in "".join(deltas)
    assert list(text_deltas([], tok)) == []
