"""CKNNA between Harmon's two branches: its shared MAR encoder with every token visible
(understanding) and with part of them masked (generation)."""

import torch

from square_samples import COLOURS, square
from hydra_umm.eval.alignment import alignment_features, branch_features, evaluate_cknna
from hydra_umm.inference import HarmonPipeline


def images() -> torch.Tensor:
    return torch.stack([square(c) * s for c in COLOURS for s in (1.0, 0.5)])  # 8 images, (8, 3, 32, 32)


def test_branches_are_the_encoder_with_and_without_masking(harmon_model):
    model, x = harmon_model.eval(), images()
    N, S = model.num_tokens, model.buffer_size
    clean = branch_features(model, x, t=1.0)  # nothing masked: the same tokens twice
    torch.testing.assert_close(clean["generation"], clean["understanding"], rtol=0, atol=0)
    half = branch_features(model, x, t=0.5, seed=3)
    assert half["understanding"].shape == (8, N + S, model.llm.config.hidden_size)
    assert half["generation"].shape == (8, N - N // 2 + S, model.llm.config.hidden_size)
    assert not torch.allclose(half["generation"][:, -S:], half["understanding"][:, -S:])  # buffers see the mask
    torch.testing.assert_close(branch_features(model, x, t=0.5, seed=3)["generation"], half["generation"])


def test_harmon_pipelines_cknna_has_the_branch_pair_only(harmon_model):
    pipe = HarmonPipeline(harmon_model)
    features, pairs = alignment_features(pipe, list(images()))
    assert pairs == [("generation", "understanding")] and set(features) == {"generation", "understanding"}
    scores = evaluate_cknna(pipe, list(images()), k=3, t=1.0)
    assert scores == {"generation vs understanding": scores["generation vs understanding"]}
    assert abs(scores["generation vs understanding"] - 1.0) < 1e-5  # identical features: CKNNA 1
    assert evaluate_cknna(pipe, list(images()), k=3)["generation vs understanding"] < 1.0 - 1e-4
