"""HydraPipeline over a HYDRA-X model: video generation, editing with separate instruction and
image guidance, and video understanding; cached paths against full recomputation."""

import numpy as np
import pytest
import torch
from PIL import Image

from hydra_umm import flow
from hydra_umm.config import load_config
from hydra_umm.data.transforms import to_pil
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer

TEXTS = ["a red square moves left", "make the square blue", "remove the circle", "what moves?", "red", "left"]
PROMPTS = ["a red square moves left", "make the square blue and move it to the left of the circle"]


@pytest.fixture(scope="module")
def pipe(random_pipeline):
    return random_pipeline("hydra-x-tiny", ["tokenizer.image_size=32", "umm.flow.steps=2"], TEXTS)


def noise(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def clips(n=2, frames=5, seed=0):
    return list(noise(n, 3, frames, 32, 32, seed=seed).clamp(-1, 1))


def images(n=2, seed=0):
    """(n, 3, 32, 32) in [-1, 1]."""
    return noise(n, 3, 32, 32, seed=seed).clamp(-1, 1)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_video_velocity_equals_full_recomputation(pipe, cfg_scale):
    N, c = pipe.model.num_image_tokens, pipe.model.cfg.tokenizer.latent_dim
    cached = pipe.velocity_fn(PROMPTS, cfg_scale, use_cache=True, frames=3)
    full = pipe.velocity_fn(PROMPTS, cfg_scale, use_cache=False, frames=3)
    with torch.no_grad():
        for step, t in enumerate((0.0, 0.5, 0.9)):
            z_t, tt = noise(2, 3, N, c, seed=step), torch.full((2,), t)
            v_cached, v_full = cached(z_t, tt), full(z_t, tt)
            assert v_cached.shape == z_t.shape and v_cached.abs().mean() > 1e-3
            assert torch.allclose(v_cached, v_full, atol=1e-5), (v_cached - v_full).abs().max()


@pytest.mark.parametrize("scales", [(1.0, 1.0), (3.0, 1.5)])
def test_cached_edit_velocity_equals_full_recomputation(pipe, scales):
    model = pipe.model
    source = model.latents(images())
    cached = pipe.edit_velocity_fn(PROMPTS, source, *scales, use_cache=True)
    full = pipe.edit_velocity_fn(PROMPTS, source, *scales, use_cache=False)
    with torch.no_grad():
        for step, t in enumerate((0.0, 0.7)):
            z_t, tt = noise(*source.shape, seed=step), torch.full((2,), t)
            assert torch.allclose(cached(z_t, tt), full(z_t, tt), atol=1e-5)


def test_edit_guidance_combines_three_conditions_with_separate_scales(pipe):
    """v = v(0, 0) + s_img (v(0, src) - v(0, 0)) + s_txt (v(instr, src) - v(0, src)), each term an
    unguided velocity of its own (instruction, source) condition."""
    model = pipe.model
    source = model.latents(images(seed=1))
    z_t, t = noise(*source.shape, seed=2), torch.full((2,), 0.3)
    with torch.no_grad():
        guided = pipe.edit_velocity_fn(PROMPTS, source, 2.5, 1.7)(z_t, t)
        v_full = pipe.edit_velocity_fn(PROMPTS, source, 1.0, 1.0)(z_t, t)
        v_source = pipe.edit_velocity_fn(["", ""], source, 1.0, 1.0)(z_t, t)
        v_none = pipe.edit_velocity_fn(["", ""], torch.zeros_like(source), 1.0, 1.0)(z_t, t)
    reference = v_none + 1.7 * (v_source - v_none) + 2.5 * (v_full - v_source)
    assert torch.allclose(guided, reference, atol=1e-5)
    assert not torch.allclose(v_full, v_source, atol=1e-4)  # the instruction matters
    assert not torch.allclose(v_source, v_none, atol=1e-4)  # and so does the source


def test_generate_video_and_edit_are_reproducible(pipe):
    a = pipe.generate_video(PROMPTS[:1], frames=5, seed=3)
    b = pipe.generate_video(PROMPTS[:1], frames=5, seed=3, use_cache=False)
    assert len(a) == 1 and len(a[0]) == 5 and a[0][0].size == (32, 32)
    assert all(np.abs(np.asarray(x, float) - np.asarray(y, float)).max() <= 1 for x, y in zip(a[0], b[0]))
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        pipe.generate_video(PROMPTS[:1], frames=6)
    sources = to_pil(images())
    e1 = pipe.edit(sources, PROMPTS, steps=2, seed=4)
    e2 = pipe.edit(sources, PROMPTS, steps=2, seed=4)
    assert [im.size for im in e1] == [(32, 32)] * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(e1, e2))
    with pytest.raises(ValueError, match="one image per instruction"):
        pipe.edit(sources, PROMPTS[:1])
    with pytest.raises(ValueError, match="image_cfg_scale must be a finite number"):
        pipe.edit(sources, PROMPTS, image_cfg_scale=float("nan"))


def test_edit_strength_starts_the_flow_from_the_noised_source(pipe):
    """strength 1 is the edit from noise; below it the path starts at t0 = 1 - strength from the
    source's latents noised to t0 with the seed's noise, every step spent on [t0, 1] (checked against
    the Euler steps written out), and a strength near 0 returns the source as the tokenizer decodes it."""
    model, fc, umm = pipe.model, pipe.model.cfg.umm.flow, pipe.model.cfg.umm
    sources = to_pil(images(seed=5))
    pixels = lambda ims: np.stack([np.asarray(im, dtype=np.int16) for im in ims])  # noqa: E731
    from_noise = pixels(pipe.edit(sources, PROMPTS, steps=2, seed=4))
    assert np.array_equal(pixels(pipe.edit(sources, PROMPTS, steps=2, seed=4, strength=1.0)), from_noise)
    with torch.no_grad():
        source = model.latents(pipe.pixels(sources))
        x = 0.7 * source + 0.3 * torch.randn(source.shape, generator=pipe._generator(4))
        velocity = pipe.edit_velocity_fn(PROMPTS, source, umm.cfg_scale, umm.image_cfg_scale)
        ts = 0.7 + 0.3 * flow.time_grid(2, fc.shift)
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t) * velocity(x, t.expand(2))
        expected = pixels(to_pil(model.decode(x, generator=pipe._generator(5))))
        decoded_source = pixels(to_pil(model.decode(source, generator=pipe._generator(5))))
    from_source = pixels(pipe.edit(sources, PROMPTS, steps=2, seed=4, strength=0.3))
    assert np.abs(from_source - expected).max() <= 1 and np.abs(from_source - from_noise).max() > 8
    almost_none = pixels(pipe.edit(sources, PROMPTS, steps=2, seed=4, strength=1e-4))
    assert np.abs(almost_none - decoded_source).max() <= 2
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength must be in \\(0, 1\\]"):
            pipe.edit(sources, PROMPTS, strength=bad)


def test_video_answers_cached_equal_uncached_and_depend_on_the_clip(pipe):
    questions = ["what moves?", "what moves?"]
    videos = clips(2, 5)
    cached = pipe.answer_ids(questions=questions, videos=videos, max_new_tokens=6)
    full = pipe.answer_ids(questions=questions, videos=videos, max_new_tokens=6, use_cache=False)
    assert cached == full and max(map(len, cached)) > 1
    frames = [to_pil(v.transpose(0, 1)) for v in videos]  # PIL frames give the same answers
    assert pipe.answer_ids(questions=questions, videos=frames, max_new_tokens=6) == cached
    scores = pipe.loglikelihood(None, questions, ["red", "left"], videos=videos)
    assert len(scores) == 2 and all(np.isfinite(lp) and lp < 0 for lp, _ in scores)
    with pytest.raises(ValueError, match="images or videos"):
        pipe.answer(questions=questions)
    with pytest.raises(ValueError, match="different lengths"):
        pipe.answer(questions=questions, videos=[videos[0], clips(1, 9)[0]])


def test_an_image_only_hydra_refuses_videos_and_edits():
    cfg = load_config("tiny", ["tokenizer.image_size=32"])
    pipe = HydraPipeline(HydraModel(cfg, train_text_tokenizer(TEXTS * 4, cfg.llm.vocab_size)))
    with pytest.raises(ValueError, match="HYDRA-X"):
        pipe.generate_video(["a"], frames=5)
    with pytest.raises(ValueError, match="HYDRA-X"):
        pipe.answer(questions=["what moves?"], videos=clips(1, 5))


def test_the_cli_edits_generates_clips_and_answers_about_clips(pipe, tmp_path, capsys):
    from hydra_umm import cli
    from hydra_umm.data.video import read_frames, write_clip

    model_dir = tmp_path / "model"
    pipe.model.save_pretrained(model_dir)
    to_pil(images(1))[0].save(tmp_path / "in.png")
    common = ["--model", str(model_dir), "--steps", "2"]
    cli.main(["edit", *common, "--image", str(tmp_path / "in.png"), "--instruction", "make the square blue",
              "--out", str(tmp_path / "edited.png")])
    assert (tmp_path / "edited.png").is_file()
    source = [Image.open(tmp_path / "in.png")]
    cli.main(["edit", *common, "--image", str(tmp_path / "in.png"), "--instruction", "make the square blue",
              "--strength", "0.5", "--out", str(tmp_path / "from_source.png")])
    (expected,) = pipe.edit(source, ["make the square blue"], steps=2, strength=0.5)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "from_source.png")), np.asarray(expected))
    with pytest.raises(SystemExit):
        cli.main(["edit", *common, "--image", str(tmp_path / "in.png"), "--instruction", "x", "--strength", "0",
                  "--out", str(tmp_path / "never.png")])
    assert "strength must be in (0, 1]" in capsys.readouterr().err and not (tmp_path / "never.png").exists()
    cli.main(["generate", *common, "--video", "--frames", "5", "--prompt", PROMPTS[0], "--out", str(tmp_path / "c.mp4")])
    assert len(read_frames(tmp_path / "c.mp4")) == 5
    write_clip(to_pil(clips(1, 5)[0].transpose(0, 1)), tmp_path / "q.mp4")
    capsys.readouterr()
    cli.main(["answer", "--model", str(model_dir), "--video", str(tmp_path / "q.mp4"), "--question", "what moves?",
              "--max-new-tokens", "4"])
    assert capsys.readouterr().out.strip()
    write_clip(to_pil(clips(1, 9)[0].transpose(0, 1))[:8], tmp_path / "eight.mp4")  # not 1 + 4k frames
    with pytest.raises(SystemExit):
        cli.main(["answer", "--model", str(model_dir), "--video", str(tmp_path / "eight.mp4"), "--question", "?"])
    assert "has 8 frames" in capsys.readouterr().err
    cli.main(["answer", "--model", str(model_dir), "--video", str(tmp_path / "eight.mp4"), "--frames", "5",
              "--question", "what moves?", "--max-new-tokens", "4"])
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):  # not by repeating frames
        cli.main(["answer", "--model", str(model_dir), "--video", str(tmp_path / "eight.mp4"), "--frames", "9",
                  "--question", "?"])
    assert "has 8 frames, fewer than --frames 9" in capsys.readouterr().err
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(SystemExit):
        cli.main(["answer", "--model", str(model_dir), "--video", str(tmp_path / "broken.mp4"), "--question", "?"])
    assert "broken.mp4" in capsys.readouterr().err
