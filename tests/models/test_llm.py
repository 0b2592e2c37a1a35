"""The LM wrapper, the text tokenizer, the mixed sequence layout and mask, and the vision head."""

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hydra_umm.config import load_config
from hydra_umm.models.llm import IGNORE, Image, Text, build_language_model, layout, mixed_attention_mask
from hydra_umm.models.text_tokenizer import (
    EOS,
    PAD,
    SPECIAL_TOKENS,
    add_special_tokens,
    build_text_tokenizer,
    load_text_tokenizer,
    train_text_tokenizer,
)
from hydra_umm.models.vision_head import VisionHead

TEXTS = [f"a {c} {s} on the {p}" for c in ("red", "blue") for s in ("circle", "square") for p in ("left", "right")]
TEXTS += ["how many shapes are there?", "what colour is the circle?", "two", "three"]


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["llm.num_layers=2", "llm.hidden_size=64", "llm.intermediate_size=128"])


@pytest.fixture(scope="module")
def text_tokenizer(cfg):
    return train_text_tokenizer(TEXTS * 3, cfg.llm.vocab_size)


@pytest.fixture(scope="module")
def lm(cfg):
    torch.manual_seed(0)
    return build_language_model(cfg.llm).eval()


# ------------------------------------------------------------------------------ text tokenizer


def test_trained_tokenizer_round_trips_unseen_text_and_saves(text_tokenizer, cfg, tmp_path):
    assert len(text_tokenizer) <= cfg.llm.vocab_size
    text = "a purple zebra jumps — über 42!"
    ids = text_tokenizer(text, add_special_tokens=False).input_ids
    assert text_tokenizer.decode(ids) == text
    for token in SPECIAL_TOKENS:  # each special token is one id, never split
        assert len(text_tokenizer(token, add_special_tokens=False).input_ids) == 1
    assert text_tokenizer.pad_token == PAD and text_tokenizer.eos_token == EOS
    assert len(text_tokenizer("a red circle", add_special_tokens=False).input_ids) < 12  # merges were learned
    text_tokenizer.save_pretrained(str(tmp_path))
    loaded = load_text_tokenizer(str(tmp_path))
    assert loaded(text, add_special_tokens=False).input_ids == ids
    special = list(SPECIAL_TOKENS)
    assert loaded.convert_tokens_to_ids(special) == text_tokenizer.convert_tokens_to_ids(special)


def test_missing_special_tokens_are_added_to_a_foreign_tokenizer(tmp_path):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(TEXTS, trainer=trainer)
    foreign = PreTrainedTokenizerFast(tokenizer_object=bpe)
    before = len(foreign)
    foreign.save_pretrained(str(tmp_path))
    tok = load_text_tokenizer(str(tmp_path))  # the paper path: AutoTokenizer + missing tokens added
    assert len(tok) == before + len(SPECIAL_TOKENS) - 1
    assert tok.pad_token_id == foreign.convert_tokens_to_ids(PAD)  # existing tokens keep their ids
    assert add_special_tokens(tok) is tok and len(tok) == before + len(SPECIAL_TOKENS) - 1  # idempotent


def test_tokenizer_errors_are_clear(cfg):
    with pytest.raises(ValueError, match="needs training texts"):
        build_text_tokenizer(cfg.llm, [])
    with pytest.raises(ValueError, match="below the byte alphabet"):
        train_text_tokenizer(TEXTS, 100)


# ------------------------------------------------------------------------------ language model


def test_tiny_lm_has_the_configured_sizes_and_loads_from_a_local_path(cfg, lm, tmp_path):
    assert lm.config.hidden_size == 64 and lm.config.num_hidden_layers == 2
    assert lm.get_input_embeddings().weight.shape == (cfg.llm.vocab_size, 64)
    lm.save_pretrained(str(tmp_path))
    cfg_path = load_config("tiny", [f"llm.path={tmp_path}"])
    loaded = build_language_model(cfg_path.llm)
    for (name, a), (_, b) in zip(lm.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    bf16 = copy.deepcopy(lm).to(torch.bfloat16)  # as Qwen2.5 ships: weights and config in bf16
    bf16.save_pretrained(str(tmp_path / "bf16"))
    for checkpoint in (build_language_model(load_config("tiny", [f"llm.path={tmp_path / 'bf16'}"]).llm),
                       build_language_model(cfg.llm, bf16.config)):  # the skeleton HydraModel.from_pretrained builds
        assert {p.dtype for p in checkpoint.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------ layout and mask

SAMPLES = [
    [Text([5, 6]), Image(3), Text([7, 8], target=True)],
    [Text([9]), Image(2), Text([10]), Image(2), Text([11], target=True)],
    [Text([12, 13, 14])],
]


def test_layout_left_pads_and_numbers_blocks():
    lay = layout(SAMPLES, pad_id=0, image_id=1)
    assert lay.input_ids.shape == (3, 7)
    assert lay.input_ids[0].tolist() == [5, 6, 1, 1, 1, 7, 8]
    assert lay.input_ids[2].tolist() == [0, 0, 0, 0, 12, 13, 14]
    assert lay.valid[2].tolist() == [False] * 4 + [True] * 3
    assert lay.position_ids[2].tolist() == [0, 0, 0, 0, 0, 1, 2]
    assert lay.block[1].tolist() == [0, 1, 1, 0, 2, 2, 0]
    assert lay.labels[0].tolist() == [IGNORE] * 5 + [7, 8]
    assert lay.labels[1].tolist() == [IGNORE] * 6 + [11]
    assert lay.visual.sum().item() == 7
    with pytest.raises(ValueError, match="no tokens"):
        layout([[Text([])]], 0, 1)


def _reference_mask(valid, block, num_queries):
    """Token by token: may query q see key k?"""
    B, K = valid.shape
    out = torch.zeros(B, 1, num_queries, K, dtype=torch.bool)
    for b in range(B):
        for i in range(num_queries):
            q = K - num_queries + i
            for k in range(K):
                if not valid[b, q]:
                    out[b, 0, i, k] = k == q
                elif valid[b, k]:
                    same_block = block[b, q] > 0 and block[b, q] == block[b, k]
                    out[b, 0, i, k] = bool(k <= q or same_block)
    return out


@pytest.mark.parametrize("num_queries", [None, 3, 1])
def test_mixed_mask_matches_the_token_by_token_reference(num_queries):
    lay = layout(SAMPLES, pad_id=0, image_id=1)
    mask = mixed_attention_mask(lay.valid, lay.block, num_queries)
    Q = num_queries or lay.valid.shape[1]
    assert mask.shape == (3, 1, Q, 7) and mask.dtype == torch.float32
    allowed = _reference_mask(lay.valid, lay.block, Q)
    assert torch.equal(mask == 0, allowed)
    assert torch.all(mask[~allowed] == torch.finfo(torch.float32).min)


def test_text_never_sees_later_tokens_and_image_blocks_are_bidirectional():
    lay = layout(SAMPLES, pad_id=0, image_id=1)
    seen = mixed_attention_mask(lay.valid, lay.block)[:, 0] == 0  # (B, L, L)
    L = lay.valid.shape[1]
    later = torch.ones(L, L, dtype=torch.bool).triu(1)
    text_rows = lay.block == 0
    assert not (seen & later & text_rows[:, :, None]).any()
    # a text token after an image sees the whole block, the first block token sees the last
    assert seen[0, 5, 2:5].all() and seen[0, 2, 4]
    # blocks do not see each other's future: block 1 of row 1 does not see block 2
    assert not seen[1, 1:3, 4:6].any() and seen[1, 4:6, 1:3].all()


def test_mask_rejects_bad_query_counts():
    with pytest.raises(ValueError, match="num_queries"):
        mixed_attention_mask(torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.long), 5)


def test_padded_rows_give_the_same_hidden_states_as_unpadded(lm):
    """Padding handled: left padding with the mask and position ids changes nothing for real tokens."""
    lay = layout(SAMPLES, pad_id=0, image_id=1)
    embeds = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
    mask = mixed_attention_mask(lay.valid, lay.block)
    with torch.no_grad():
        batched = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=lay.position_ids).last_hidden_state
        for b in range(3):
            v = lay.valid[b]
            alone = layout([SAMPLES[b]], pad_id=0, image_id=1)
            single = lm.model(
                inputs_embeds=embeds[b : b + 1, v],
                attention_mask=mixed_attention_mask(alone.valid, alone.block),
                position_ids=alone.position_ids,
            ).last_hidden_state
            assert torch.allclose(batched[b, v], single[0], atol=1e-5)
    assert torch.isfinite(batched).all()


# ------------------------------------------------------------------------------ vision head


def test_vision_head_starts_at_exactly_zero_and_learns_to_depend_on_t():
    torch.manual_seed(0)
    head = VisionHead(llm_width=64, width=32, depth=2, num_heads=4, latent_dim=8)
    hidden = torch.randn(2, 5, 64)
    v = head(hidden, torch.tensor([0.2, 0.9]))
    assert v.shape == (2, 5, 8) and torch.equal(v, torch.zeros_like(v))
    # one gradient step on a target moves the output off zero, and t then changes it
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(3):
        loss = (head(hidden, torch.tensor([0.2, 0.9])) - 1).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert head(hidden, torch.tensor([0.2, 0.9])).abs().sum() > 0
    assert not torch.allclose(head(hidden, torch.tensor([0.2, 0.2])), head(hidden, torch.tensor([0.9, 0.9])))


def test_a_missing_llm_path_names_the_folder(tmp_path):
    cfg = load_config("tiny", [f"llm.path={tmp_path / 'Qwen2.5'}"]).llm
    with pytest.raises(FileNotFoundError, match=f"llm.path {tmp_path / 'Qwen2.5'}: no such folder"):
        build_language_model(cfg)
