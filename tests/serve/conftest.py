"""Shared fixtures of the serving tests: one tiny random HYDRA, saved once, served in-process and by a
real `hydra-umm serve` subprocess on a free localhost port (always terminated)."""

import os
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from hydra_umm.config import load_config
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer
from hydra_umm.serve import create_app

from serving import MAX_IMAGE_BYTES, MODEL_NAME, QUEUE_DEPTH, TEXTS, free_port


@pytest.fixture(scope="session")
def pipe():
    """A tiny random HydraModel (32 px, 3 flow steps, 2 decoder steps) whose zero-initialised
    vision-head layers are randomised, so that generated images depend on prompt and seed."""
    torch.manual_seed(0)
    tokenizer = train_text_tokenizer(TEXTS * 4, 1024)
    cfg = load_config("tiny", ["tokenizer.image_size=32", "tokenizer.decode_steps=2", "umm.flow.steps=3"])
    model = HydraModel(cfg, tokenizer)
    with torch.no_grad():
        for p in model.vision_head.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return HydraPipeline(model)


@pytest.fixture(scope="session")
def model_dir(pipe, tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve") / MODEL_NAME
    pipe.model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def client(pipe):
    """The whole app (API and page) in-process."""
    with TestClient(create_app(pipe, MODEL_NAME, QUEUE_DEPTH, MAX_IMAGE_BYTES)) as c:
        yield c


@pytest.fixture(scope="session")
def image():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())  # resized to 32 by the pipeline


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    """`hydra-umm serve` in a subprocess; yields its base URL once /v1/models answers."""
    port = free_port()
    command = [sys.executable, "-m", "hydra_umm.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--queue-depth", str(QUEUE_DEPTH), "--max-image-bytes", str(MAX_IMAGE_BYTES)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as out:  # the child keeps its own copy of the file
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
