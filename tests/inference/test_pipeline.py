"""HydraPipeline: cached paths against full recomputation, seeds, and the CLI end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

from hydra_umm import cli
from hydra_umm.data.transforms import to_pil
from hydra_umm.eval.alignment import branch_features

TEXTS = ["a red square", "a blue circle on the left", "what colour is the square?", "red", "blue", "how many?"]
PROMPTS = ["a red square", "a blue circle on the left of a big green triangle"]  # different lengths: padding


@pytest.fixture(scope="module")
def pipe(random_pipeline):
    return random_pipeline("tiny", ["tokenizer.image_size=32", "tokenizer.decode_steps=2", "umm.flow.steps=3"], TEXTS)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return to_pil(torch.rand(2, 3, 40, 40, generator=g) * 2 - 1)  # resized to 32 by the pipeline


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_velocity_equals_full_recomputation(pipe, cfg_scale):
    model = pipe.model
    cached = pipe.velocity_fn(PROMPTS, cfg_scale, use_cache=True)
    full = pipe.velocity_fn(PROMPTS, cfg_scale, use_cache=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (0.0, 0.4, 0.9):  # several ODE steps against the same prefix cache
            z_t = torch.randn(2, model.num_image_tokens, model.cfg.tokenizer.latent_dim, generator=g)
            tt = torch.full((2,), t)
            v_cached, v_full = cached(z_t, tt), full(z_t, tt)
            assert v_cached.shape == z_t.shape and v_cached.abs().mean() > 1e-3
            assert torch.allclose(v_cached, v_full, atol=1e-5), (v_cached - v_full).abs().max()
        assert not torch.allclose(cached(z_t, tt)[0], cached(z_t, tt)[1])  # the prompt matters


def test_guidance_moves_from_the_unconditional_velocity_towards_the_prompts(pipe):
    """v = v("") + s (v(prompt) - v("")), each side measured unguided."""
    model = pipe.model
    z_t = torch.randn(2, model.num_image_tokens, model.cfg.tokenizer.latent_dim, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 0.3)
    with torch.no_grad():
        v_cond, v_uncond = pipe.velocity_fn(PROMPTS, 1.0)(z_t, t), pipe.velocity_fn(["", ""], 1.0)(z_t, t)
        guided = pipe.velocity_fn(PROMPTS, 3.0)(z_t, t)
    assert torch.allclose(guided, v_uncond + 3.0 * (v_cond - v_uncond), atol=1e-5)
    assert not torch.allclose(v_cond, v_uncond, atol=1e-4)  # so the check can tell the two apart


def test_generate_is_reproducible_and_cache_agnostic(pipe):
    a = pipe.generate_latents(PROMPTS, steps=3, cfg_scale=2.0, seed=7)
    b = pipe.generate_latents(PROMPTS, steps=3, cfg_scale=2.0, seed=7, use_cache=False)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, pipe.generate_latents(PROMPTS, steps=3, cfg_scale=2.0, seed=8))
    heun = pipe.generate_latents(PROMPTS, steps=2, cfg_scale=2.0, sampler="heun", seed=7)
    assert heun.shape == a.shape and not torch.allclose(heun, a)
    first = pipe.generate(PROMPTS, seed=1)
    second = pipe.generate(PROMPTS, seed=1)
    assert [im.size for im in first] == [(32, 32)] * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first, second))
    for bad in ([], "a red square"):  # a bare string would be one prompt per character
        with pytest.raises(ValueError, match="non-empty list of strings"):
            pipe.generate(bad)
    for scale in (float("nan"), float("inf")):  # would integrate to blank images
        with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
            pipe.generate(PROMPTS, cfg_scale=scale)
    for steps in (0, -1):  # 0 no longer falls back to the config's steps
        with pytest.raises(ValueError, match="steps >= 1"):
            pipe.generate(PROMPTS, steps=steps)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_answer_decoding_equals_uncached_token_for_token(pipe, images, temperature):
    questions = ["what colour is the square?", "how many?"]
    cached = pipe.answer_ids(images, questions, max_new_tokens=8, temperature=temperature, seed=3)
    full = pipe.answer_ids(images, questions, max_new_tokens=8, temperature=temperature, seed=3, use_cache=False)
    assert cached == full
    assert max(len(row) for row in cached) > 1
    assert pipe.answer(images, questions, max_new_tokens=8, temperature=temperature, seed=3) == [
        pipe.model.text_tokenizer.decode(row, skip_special_tokens=True) for row in cached
    ]


def test_answers_depend_on_the_image_and_sampling_follows_the_seed(pipe, images):
    q = ["what colour is the square?"] * 2
    seeded = [pipe.answer_ids(images, q, max_new_tokens=6, temperature=1.0, seed=s) for s in (0, 0, 1)]
    assert seeded[0] == seeded[1] and seeded[0] != seeded[2]
    with torch.no_grad():
        model = pipe.model
        lay = model.layout([model.understanding_segments(q[0])] * 2)
        visual = model.visual_tokens(model.latents(pipe.pixels(images)), torch.ones(2))
        last = model.sequence_hidden_states(lay, visual)[:, -1]
    assert not torch.allclose(last[0], last[1])
    with pytest.raises(ValueError, match="one image per question"):
        pipe.answer(images, q[:1])
    for bad in ({"temperature": -1.0}, {"temperature": float("nan")}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match="finite temperature >= 0 and max_new_tokens >= 1"):
            pipe.answer(images, q, **bad)


def test_a_cold_temperature_samples_the_greedy_answer_and_eos_ends_it(pipe, images, monkeypatch):
    questions = ["what colour is the square?", "how many?"]
    greedy = pipe.answer_ids(images, questions, max_new_tokens=6, temperature=0.0)
    for seed in range(3):  # logits / 1e-3: one token holds all the probability
        assert pipe.answer_ids(images, questions, max_new_tokens=6, temperature=1e-3, seed=seed) == greedy
    model = pipe.model
    eos_logits = torch.nn.functional.one_hot(torch.tensor(model.ids["eos"]), len(model.text_tokenizer)).float()
    monkeypatch.setattr(model.llm.lm_head, "forward", lambda hidden: eos_logits.expand(*hidden.shape[:-1], -1))
    assert pipe.answer_ids(images, questions, max_new_tokens=4) == [[], []]  # eos is not part of the answer


def test_alignment_branches_are_the_clean_and_the_noised_visual_tokens(pipe, images):
    model, x = pipe.model, pipe.pixels(images)
    with torch.no_grad():
        clean = branch_features(model, x, t=1.0)
        torch.testing.assert_close(clean["generation"], clean["understanding"])
        half = branch_features(model, x, t=0.5, seed=1)
        z = model.latents(x)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(half["understanding"], model.visual_tokens(z, torch.ones(len(z))))
        torch.testing.assert_close(half["generation"], model.visual_tokens(0.5 * noise + 0.5 * z, torch.full((len(z),), 0.5)))


def test_reconstruct_is_reproducible(pipe, images):
    a, b = pipe.reconstruct(images[:1], steps=2, seed=5), pipe.reconstruct(images[:1], steps=2, seed=5)
    assert a[0].size == (32, 32) and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_cli_generate_answer_reconstruct_end_to_end(pipe, images, tmp_path, capsys):
    model_dir = tmp_path / "model"
    pipe.model.save_pretrained(model_dir)
    out = tmp_path / "gen.png"
    cli.main(["generate", "--model", str(model_dir), "--prompt", PROMPTS[0], "--out", str(out), "--steps", "2"])
    expected = pipe.generate(PROMPTS[:1], steps=2, seed=0)[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))

    image_path = tmp_path / "in.png"
    images[0].save(image_path)
    capsys.readouterr()
    cli.main(["answer", "--model", str(model_dir), "--image", str(image_path), "--question", "how many?"])
    printed = capsys.readouterr().out
    (answer,) = pipe.answer([Image.open(image_path)], ["how many?"], max_new_tokens=32)
    assert printed == answer + "\n"

    recon = tmp_path / "recon.png"
    cli.main(
        ["reconstruct", "--model", str(model_dir), "--image", str(image_path), "--out", str(recon), "--steps", "2"]
    )
    expected = pipe.reconstruct([Image.open(image_path)], steps=2, seed=0)[0]
    assert np.array_equal(np.asarray(Image.open(recon)), np.asarray(expected))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit):  # a clear error, not a traceback
        cli.main(["answer", "--model", str(model_dir), "--image", str(tmp_path / "notes.png"), "--question", "?"])
    assert "notes.png: UnidentifiedImageError" in capsys.readouterr().err
    model = ["--model", str(model_dir)]
    for flags, message in [(["generate", *model, "--prompt", "a", "--out", str(out), "--steps", "0"],
                            "argument --steps: must be an integer >= 1, got 0"),
                           (["generate", *model, "--prompt", "a", "--out", str(out), "--seed", str(2**64)],
                            "argument --seed: must be an integer in [0, 9223372036854775807]"),
                           (["answer", *model, "--image", str(image_path), "--question", "?", "--device", "gpu0"],
                            "unknown device 'gpu0'")]:
        with pytest.raises(SystemExit):
            cli.main(flags)
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            cli.main(["answer", *model, "--image", str(image_path), "--question", "?", "--device", "cuda"])
        assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_loglikelihood_matches_the_training_loss_and_knows_greedy_answers(pipe, images):
    model = pipe.model
    question, answer = "what colour is the square?", "red"
    answer_ids = model.text_tokenizer(answer, add_special_tokens=False).input_ids
    # log p(answer + eos) must be exactly what the training loss scores for the same sample
    (lp, _), = pipe.loglikelihood_ids(images[:1], [question], [answer_ids + [model.ids["eos"]]])
    with torch.no_grad():
        sample = {"kind": "und", "image": pipe.pixels(images[:1])[0], "prompt": question, "target": answer}
        loss = model(model.collate([sample]))
    assert lp == pytest.approx(-loss["loss_ntp"].item() * (len(answer_ids) + 1), rel=1e-5)
    # the greedy continuation is greedy; changing its first token makes it not greedy and less likely
    (greedy_ids,) = pipe.answer_ids(images[:1], [question], max_new_tokens=3)
    greedy_ids = greedy_ids or [model.ids["eos"]]
    other = [(greedy_ids[0] + 1) % model.llm.config.vocab_size] + greedy_ids[1:]
    (lp_greedy, is_greedy), (lp_other, other_greedy) = pipe.loglikelihood_ids(
        images[:1] * 2, [question] * 2, [greedy_ids, other])
    assert is_greedy and not other_greedy and lp_greedy > lp_other
    # padding: scored in a batch with a longer context it is the same as alone
    batch = pipe.loglikelihood(images, [question, question + " tell me now please"], [answer, answer])
    alone = pipe.loglikelihood(images[:1], [question], [answer])
    assert batch[0][0] == pytest.approx(alone[0][0], abs=1e-4)


def test_generate_reports_progress_and_the_vocabulary_fits_the_tokenizer(pipe):
    seen = []
    pipe.generate(PROMPTS[:1], steps=3, seed=0, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    # a random LM has one embedding row per text token: no id decodes to nothing
    assert pipe.model.llm.get_input_embeddings().num_embeddings == len(pipe.model.text_tokenizer)


def test_answer_ids_reports_every_token_as_it_is_decoded(pipe, images):
    steps = []
    (ids,) = pipe.answer_ids(images[:1], ["what is it?"], max_new_tokens=5, on_token=lambda t: steps.append(t.tolist()))
    eos = pipe.model.ids["eos"]
    assert [row[0] for row in steps if row[0] != eos] == ids and 1 <= len(steps) <= 5
