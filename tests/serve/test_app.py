"""The page's task functions in-process (HYDRA-X's edit and video tabs too), tab discovery from the
pipeline, the model panel."""

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from hydra_umm.config import load_config
from hydra_umm.data.video import read_frames, write_clip
from hydra_umm.eval.metrics import psnr
from hydra_umm.inference import HydraPipeline, TokenizerPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer
from hydra_umm.data.transforms import to_tensor
from hydra_umm.serve import Tasks, build_page, create_app
from hydra_umm.serve.app import model_card
from hydra_umm.serve.capabilities import capabilities
from hydra_umm.serve.queue import ModelQueue


@pytest.fixture(scope="module")
def tasks(pipe):
    queue = ModelQueue(depth=4)
    yield Tasks(pipe, queue)
    queue.close()


def same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("sampler, steps", [("euler", 3), ("heun", 2)])
def test_generate_tab_returns_the_pipelines_images_and_reports_every_step(tasks, pipe, sampler, steps):
    reports = []
    images = tasks.generate("a red square", steps, 2.0, sampler, 5, 2, progress=lambda p, **_: reports.append(p))
    assert [im.size for im in images] == [(32, 32)] * 2
    assert same(images, pipe.generate(["a red square"] * 2, steps, 2.0, sampler, 5))
    assert reports == [(i, steps) for i in range(1, steps + 1)]
    assert same(images, tasks.generate("a red square", steps, 2.0, sampler, 5, 2, progress=lambda *a, **k: None))
    other = tasks.generate("a red square", steps, 2.0, sampler, 6, 1, progress=lambda *a, **k: None)
    assert not same(images[:1], other)
    with pytest.raises(gr.Error, match="prompt"):
        tasks.generate("  ", steps, 2.0, sampler, 5, 1, progress=lambda *a, **k: None)


def test_understand_tab_streams_the_answer_and_keeps_the_conversation(tasks, pipe, image):
    tok = pipe.model.text_tokenizer
    updates = list(tasks.understand(image, "what colour is the square?", [], 8, 0.0, 0))
    history, cleared, state = updates[-1]
    assert cleared == "" and state == history
    (expected,) = pipe.answer([image], ["what colour is the square?"], max_new_tokens=8)
    assert history == [{"role": "user", "content": "what colour is the square?"},
                       {"role": "assistant", "content": expected}]
    replies = [h[-1]["content"] for h, _, _ in updates]
    assert len(updates) >= 2 and all(b.startswith(a) for a, b in zip(replies, replies[1:]))

    second = list(tasks.understand(image, "how many?", history, 8, 0.0, 0))[-1][0]
    prompt = "\n".join(["what colour is the square?", expected, "how many?"])
    ids = pipe.answer_ids([image], [prompt], max_new_tokens=8)[0]
    assert second[:2] == history and second[-1]["content"] == tok.decode(ids, skip_special_tokens=True)

    sampled = [list(tasks.understand(image, "how many?", [], 8, 1.0, s))[-1][0][-1]["content"] for s in (3, 3)]
    assert sampled[0] == sampled[1] == pipe.answer([image], ["how many?"], 8, 1.0, seed=3)[0]
    with pytest.raises(gr.Error, match="upload an image"):
        next(tasks.understand(None, "how many?", [], 8, 0.0, 0))
    with pytest.raises(gr.Error, match="question"):
        next(tasks.understand(image, " ", [], 8, 0.0, 0))


def test_reconstruct_tab_shows_original_reconstruction_and_their_psnr(tasks, pipe, image):
    original, recon, score = tasks.reconstruct(image, 2, 4)
    assert original.size == recon.size == (32, 32)
    assert same([recon], pipe.reconstruct([image], steps=2, seed=4))
    db = psnr(to_tensor(original)[None], to_tensor(recon)[None]).item()
    assert score == f"PSNR {db:.2f} dB"
    assert same([original], [image.resize((32, 32), resample=3)])  # bicubic, as the pipeline resizes
    with pytest.raises(gr.Error, match="upload an image"):
        tasks.reconstruct(None, 2, 4)


def test_model_panel_counts_every_parameter_per_component(pipe):
    card = model_card(pipe, "tiny-hydra")
    model = pipe.model
    for name, child in model.named_children():
        assert f"| {name} | {sum(p.numel() for p in child.parameters()):,} |" in card
    assert f"**{sum(p.numel() for p in model.parameters()):,}**" in card
    assert "cpu, torch.float32" in card and "generate, understand, reconstruct" in card


def tab_ids(page: gr.Blocks) -> list[str]:
    return [block.id for block in page.blocks.values() if isinstance(block, gr.Tab)]


def test_tabs_and_routes_follow_the_pipelines_capabilities(pipe, client, image):
    assert capabilities(pipe) == ("generate", "understand", "reconstruct")
    queue = ModelQueue(depth=1)
    assert tab_ids(build_page(pipe, queue, "m")) == ["generate", "understand", "reconstruct", "model"]
    tokenizer_only = TokenizerPipeline(pipe.model.tokenizer)  # HYDRA-TOK alone can only reconstruct
    assert capabilities(tokenizer_only) == ("reconstruct",)
    assert tab_ids(build_page(tokenizer_only, queue, "m")) == ["reconstruct", "model"]
    card = model_card(tokenizer_only, "tok")
    assert "| tasks | reconstruct |" in card and "LLM" not in card
    assert f"**{sum(p.numel() for p in pipe.model.tokenizer.parameters()):,}**" in card
    recon = Tasks(tokenizer_only, queue).reconstruct(image, 2, 4)[1]
    assert same([recon], pipe.reconstruct([image], steps=2, seed=4))
    queue.close()
    with TestClient(create_app(tokenizer_only, "tok")) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "tok"
        assert c.post("/v1/chat/completions", json={"model": "tok", "messages": []}).status_code == 404
        assert c.post("/v1/images/generations", json={"prompt": "a"}).status_code == 404
    assert client.post("/v1/chat/completions", json={"model": "m", "messages": []}).status_code == 400


@pytest.fixture(scope="module")
def x_tasks():
    """The task functions over a tiny random HYDRA-X (32 px, 2 flow steps) with a randomised vision head."""
    torch.manual_seed(0)
    cfg = load_config("hydra-x-tiny", ["tokenizer.image_size=32", "umm.flow.steps=2"])
    model = HydraModel(cfg, train_text_tokenizer(["make the square blue", "a red circle moves left"] * 8, 1024))
    with torch.no_grad():
        for p in model.vision_head.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    queue = ModelQueue(depth=2)
    yield Tasks(HydraPipeline(model), queue)
    queue.close()


def test_a_hydra_x_model_adds_the_edit_and_video_tabs(x_tasks):
    pipe = x_tasks.pipe
    assert capabilities(pipe) == ("generate", "understand", "reconstruct", "edit", "video")
    assert tab_ids(build_page(pipe, x_tasks.queue, "x")) == [*capabilities(pipe), "model"]
    assert "| tasks | generate, understand, reconstruct, edit, video |" in model_card(pipe, "x")


def test_edit_tab_returns_the_pipelines_edit_and_reports_every_step(x_tasks, image):
    reports = []
    edited = x_tasks.edit(image, "make the square blue", 2, 3.0, 1.5, 7, progress=lambda p, **_: reports.append(p))
    assert edited.size == (32, 32) and reports == [(1, 2), (2, 2)]
    assert same([edited], x_tasks.pipe.edit([image], ["make the square blue"], 2, 3.0, 1.5, seed=7))
    other = x_tasks.edit(image, "make the square blue", 2, 3.0, 1.5, 8, progress=lambda *a, **k: None)
    assert not same([edited], [other])
    from_source = x_tasks.edit(image, "make the square blue", 2, 3.0, 1.5, 7, 0.5, progress=lambda *a, **k: None)
    assert same([from_source], x_tasks.pipe.edit([image], ["make the square blue"], 2, 3.0, 1.5, seed=7, strength=0.5))
    assert not same([edited], [from_source])
    with pytest.raises(gr.Error, match="upload an image"):
        x_tasks.edit(None, "make the square blue", 2, 3.0, 1.5, 7, progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="instruction"):
        x_tasks.edit(image, " ", 2, 3.0, 1.5, 7, progress=lambda *a, **k: None)


def test_video_tab_writes_the_pipelines_clip_as_an_mp4(x_tasks, tmp_path):
    path = Path(x_tasks.video("a red circle moves left", 5, 2, 3.0, 4, progress=lambda *a, **k: None))
    assert path.suffix == ".mp4"
    frames = read_frames(path)
    path.unlink()
    (expected,) = x_tasks.pipe.generate_video(["a red circle moves left"], 5, 2, 3.0, seed=4)
    assert len(frames) == 5 and frames[0].size == (32, 32)
    assert same(frames, read_frames(write_clip(expected, tmp_path / "expected.mp4")))  # one encoder, one clip
    with pytest.raises(gr.Error, match="1 \\+ 4k|frames"):
        x_tasks.video("a red circle moves left", 4, 2, 3.0, 4, progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="prompt"):
        x_tasks.video(" ", 5, 2, 3.0, 4, progress=lambda *a, **k: None)
