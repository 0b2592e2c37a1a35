"""A tiny fake pipeline with HydraPipeline's duck-typed interface, for tests of file layouts and
request handling (not of any model)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image


class FakePipeline:
    """generate: solid images whose colour encodes (prompt, sample index, seed); reconstruct: the
    input plus fixed noise; answer: replies from a dict keyed by question. Calls are recorded."""

    def __init__(self, size: int = 16, replies: dict[str, str] | None = None, noise: float = 8.0):
        self.size, self.replies, self.noise = size, replies or {}, noise
        self.calls: list[tuple[str, tuple, dict]] = []

    def generate(self, prompts, steps=None, cfg_scale=None, sampler=None, seed=None):
        self.calls.append(("generate", (list(prompts),), {"steps": steps, "cfg_scale": cfg_scale,
                                                          "sampler": sampler, "seed": seed}))
        out = []
        for j, prompt in enumerate(prompts):
            h = zlib.crc32(f"{prompt}|{j}|{seed}".encode())
            out.append(Image.new("RGB", (self.size, self.size), (h & 255, (h >> 8) & 255, (h >> 16) & 255)))
        return out

    def reconstruct(self, images, steps=None, seed=None):
        self.calls.append(("reconstruct", (len(images),), {"steps": steps, "seed": seed}))
        rng = np.random.default_rng(0 if seed is None else seed)
        out = []
        for im in images:
            a = np.asarray(im, dtype=np.float64) + rng.normal(0, self.noise, size=(im.size[1], im.size[0], 3))
            out.append(Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)))
        return out

    image_size = property(lambda self: self.size)

    def answer(self, images=None, questions=(), max_new_tokens=None, temperature=None, seed=None, videos=None):
        visuals = images if videos is None else videos
        self.calls.append(("answer", (len(visuals), list(questions)),
                           {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                            **({} if videos is None else {"videos": True})}))
        assert len(visuals) == len(questions)
        assert all(isinstance(im, Image.Image) for im in (images or [f for clip in videos for f in clip]))
        return [self.replies.get(q, "no idea") for q in questions]

    def edit(self, images, instructions, steps=None, cfg_scale=None, image_cfg_scale=None, sampler=None, seed=0):
        """The source with its top-left pixel coloured by (instruction, seed)."""
        self.calls.append(("edit", (len(images), list(instructions)),
                           {"steps": steps, "cfg_scale": cfg_scale, "image_cfg_scale": image_cfg_scale, "seed": seed}))
        out = []
        for image, instruction in zip(images, instructions):
            h = zlib.crc32(f"{instruction}|{seed}".encode())
            edited = image.convert("RGB").copy()
            edited.putpixel((0, 0), (h & 255, (h >> 8) & 255, (h >> 16) & 255))
            out.append(edited)
        return out

    def generate_video(self, prompts, frames=17, steps=None, cfg_scale=None, sampler=None, seed=0):
        self.calls.append(("generate_video", (list(prompts), frames), {"seed": seed}))
        return [self.generate([p] * frames, seed=seed) for p in prompts]


@pytest.fixture
def fake_pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture(scope="session")
def make_fake_pipeline():
    """The FakePipeline class, for tests that need their own replies or settings."""
    return FakePipeline


@pytest.fixture(scope="session")
def shapes_like_images(tmp_path_factory) -> list:
    """Six 32x32 RGB images with smooth structure and edges, saved to a folder (paths kept)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    paths = []
    for i in range(6):
        a = np.zeros((32, 32, 3))
        a[..., 0] = 128 + 100 * np.sin(xx / (3 + i))
        a[..., 1] = 255 * ((xx - 8 - i) ** 2 + (yy - 16) ** 2 < 60)
        a[..., 2] = rng.uniform(0, 255)
        path = folder / f"img_{i}.png"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths
