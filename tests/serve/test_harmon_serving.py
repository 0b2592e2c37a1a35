"""`hydra-umm serve` on a Harmon model: the same page and API, with Harmon's generation options."""

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from hydra_umm.config import load_config
from hydra_umm.inference import HarmonPipeline
from hydra_umm.models.harmon import HarmonModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer
from hydra_umm.serve import Tasks, build_page, create_app
from hydra_umm.serve.app import model_card
from hydra_umm.serve.queue import ModelQueue

from serving import TEXTS
from test_api import QUESTION, chat_body, decode_png
from test_app import same, tab_ids


@pytest.fixture(scope="module")
def harmon():
    """A tiny random HarmonModel at 32 px sampling in 2 masked-autoregressive steps."""
    torch.manual_seed(0)
    cfg = load_config("harmon-tiny", ["harmon.image_size=32", "harmon.mar_steps=2", "harmon.sampling_steps=3"])
    return HarmonPipeline(HarmonModel(cfg, train_text_tokenizer(TEXTS * 4, cfg.llm.vocab_size)))


def test_page_offers_every_task_with_harmons_options(harmon, image):
    queue = ModelQueue(depth=2)
    assert tab_ids(build_page(harmon, queue, "h")) == ["generate", "understand", "reconstruct", "model"]
    assert harmon.generation_options.samplers == () and harmon.generation_options.steps == 2
    tasks = Tasks(harmon, queue)
    images = tasks.generate("a red square", 2, 2.0, None, 5, 2, progress=lambda *a, **k: None)
    assert same(images, harmon.generate(["a red square"] * 2, 2, 2.0, seed=5))
    original, recon, score = tasks.reconstruct(image, 1, 0)
    assert recon.size == (32, 32) and score.startswith("PSNR")
    queue.close()
    card = model_card(harmon, "h")
    assert "| MAR | encoder width 128" in card and "2 masked-autoregressive steps" in card
    assert f"**{sum(p.numel() for p in harmon.model.parameters()):,}**" in card


def test_api_generates_and_answers_like_the_pipeline(harmon, image):
    with TestClient(create_app(harmon, "h")) as client:
        data = client.post("/v1/images/generations",
                           json={"prompt": "a red square", "size": "32x32", "seed": 3}).json()["data"]
        assert np.array_equal(decode_png(data[0]["b64_json"]), np.asarray(harmon.generate(["a red square"], seed=3)[0]))
        assert client.post("/v1/images/generations", json={"prompt": "a", "size": "64x64"}).status_code == 400
        sampler = client.post("/v1/images/generations", json={"prompt": "a", "sampler": "heun"})
        assert sampler.status_code == 400 and "takes no sampler" in sampler.json()["error"]["message"]
        body = client.post("/v1/chat/completions", json={**chat_body(image, max_tokens=4, temperature=0),
                                                         "model": "h"}).json()
        assert body["choices"][0]["message"]["content"] == harmon.answer([image], [QUESTION], 4)[0]

