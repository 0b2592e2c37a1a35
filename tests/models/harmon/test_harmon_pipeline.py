"""HarmonPipeline: masked-autoregressive sampling with the prompt's KV cache gives the same tokens as
recomputing everything, is reproducible under a seed, reveals every token exactly once, and the
understanding / reconstruction paths of HydraPipeline's interface work on Harmon."""

import pytest
import torch
from square_samples import QUESTION, square

from hydra_umm.inference.harmon_pipeline import HarmonPipeline

PROMPTS = ["a red square", "a blue square"]


@pytest.fixture(scope="module")
def pipe(harmon_model):
    torch.manual_seed(0)
    model = harmon_model.eval()
    with torch.no_grad():  # a head that is no longer zero, so that guidance and the condition matter
        for p in model.head.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return HarmonPipeline(model)


@pytest.mark.parametrize("cfg_scale", [3.0, 1.0])
def test_cached_and_uncached_sampling_give_the_same_tokens(pipe, cfg_scale):
    cached = pipe.generate_latents(PROMPTS, steps=6, cfg_scale=cfg_scale, seed=3)
    uncached = pipe.generate_latents(PROMPTS, steps=6, cfg_scale=cfg_scale, seed=3, use_cache=False)
    assert cached.shape == (2, 16, 16)
    assert (cached - uncached).norm() <= 1e-5 * cached.norm()  # relative: an untrained head gives large tokens


def test_sampling_is_seeded_and_reveals_every_token_once(pipe, monkeypatch):
    a = pipe.generate_latents(PROMPTS, steps=5, seed=1)
    assert torch.equal(a, pipe.generate_latents(PROMPTS, steps=5, seed=1))
    assert not torch.allclose(a, pipe.generate_latents(PROMPTS, steps=5, seed=2))
    assert not torch.allclose(a, pipe.generate_latents(PROMPTS, steps=5, seed=1, temperature=0.5))
    sample, sampled, ticks = pipe.model.head.sample, [], []

    def counting(cond, uncond=None, *args, **kwargs):
        sampled.append(len(cond))
        assert uncond is not None and len(uncond) == len(cond)  # guided: the uncond prompt's conditions
        return sample(cond, uncond, *args, **kwargs)

    monkeypatch.setattr(pipe.model.head, "sample", counting)
    pipe.generate_latents(PROMPTS, steps=40, seed=1, progress=lambda k, K: ticks.append((k, K)))
    assert sum(sampled) == 2 * 16 and len(sampled) < 40  # 16 tokens per image; K > N leaves steps empty
    assert ticks == [(k, 40) for k in range(1, 41)]


def test_generate_answer_and_reconstruct(pipe):
    images = pipe.generate(PROMPTS[:1], steps=3, seed=0)
    assert len(images) == 1 and images[0].size == (32, 32)
    with pytest.raises(ValueError, match="no sampler"):
        pipe.generate(PROMPTS, sampler="euler")
    with pytest.raises(ValueError, match="temperature"):
        pipe.generate_latents(PROMPTS, temperature=0.0)
    pictures = [square("red"), square("blue")]
    cached = pipe.answer_ids(pictures, [QUESTION] * 2, max_new_tokens=4)
    assert cached == pipe.answer_ids(pictures, [QUESTION] * 2, max_new_tokens=4, use_cache=False)
    assert all(isinstance(a, str) for a in pipe.answer(pictures, [QUESTION] * 2, max_new_tokens=2))
    assert pipe.reconstruct(pictures)[1].size == (32, 32)


def test_from_pretrained(pipe, tmp_path):
    pipe.model.save_pretrained(tmp_path / "harmon")
    loaded = HarmonPipeline.from_pretrained(tmp_path / "harmon")
    expected = pipe.generate_latents(PROMPTS, steps=3, seed=5)
    assert torch.equal(loaded.generate_latents(PROMPTS, steps=3, seed=5), expected)
