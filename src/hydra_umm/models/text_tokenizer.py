"""The text tokenizer of HYDRA (DESIGN section 3), one code path for both scales.

Paper presets load Qwen2.5's tokenizer from the LLM's local directory. Tiny presets cannot
download one, so they train a byte-level BPE with the `tokenizers` library on the project's own
texts (seconds). Either way the result is a ``PreTrainedTokenizerFast`` carrying HYDRA's special
tokens (Qwen2.5's own names, added when missing) and is saved/loaded with
``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hydra_umm.config import LLMConfig

PAD = "<|endoftext|>"
EOS = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"  # placeholder id at visual positions (its embedding is never read)
SPECIAL_TOKENS = (PAD, EOS, VISION_START, VISION_END, IMAGE_PAD)


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add whichever of HYDRA's special tokens are missing and name pad / eos (in place)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.pad_token = PAD
    tokenizer.eos_token = EOS
    return tokenizer


def train_text_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most ``vocab_size`` ids (special tokens included) trained on ``texts``.

    The byte alphabet is always in the vocabulary, so any text, unseen words included, round-trips.
    """
    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet plus special tokens ({min_size})")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return add_special_tokens(PreTrainedTokenizerFast(tokenizer_object=bpe))


def load_text_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer saved with ``save_pretrained`` (Qwen2.5's or ours), with HYDRA's special tokens."""
    return add_special_tokens(AutoTokenizer.from_pretrained(path))


def build_text_tokenizer(cfg: LLMConfig, texts: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """The LLM's own tokenizer when ``cfg.path`` is set, else one trained on ``texts`` with at most
    ``cfg.vocab_size`` ids."""
    if cfg.path:
        return load_text_tokenizer(cfg.path)
    texts = list(texts)
    if not texts:
        raise ValueError("a tokenizer for a randomly initialised LLM (llm.path empty) needs training texts")
    return train_text_tokenizer(texts, cfg.vocab_size)
