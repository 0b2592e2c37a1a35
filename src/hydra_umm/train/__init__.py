"""Training: the parts every recipe shares.

- ``config``       TrainConfig / LearningRates (plain dataclasses, no torch: safe for hydra_umm.config)
- ``schedule``     per-component AdamW param groups, warm-up + cosine LambdaLR
- ``checkpoint``   atomic checkpoints, keep-last-N, ``latest(run_dir)``, RNG state
- ``distributed``  torchrun env, DDP, FSDP2 ``fully_shard``, activation checkpointing, full state dicts
- ``engine``       the model-agnostic Trainer (NaN guard, validation, TensorBoard, resume)
- ``reuse``        a finished run reused only for the settings it was asked for
- ``errors``       how a run stops on its own (data ran out, non-finite losses)

Only the configuration is imported here, so that ``hydra_umm.config`` can hang TrainConfig in
without importing torch.
"""

from hydra_umm.train.config import LearningRates, TrainConfig

__all__ = ["LearningRates", "TrainConfig"]
