"""Reconstruction evaluation: PSNR, SSIM and rFID of a pipeline's ``reconstruct`` over an image set.

Images come from a folder (sorted file names) or a JSONL manifest (``data.manifest``); one that
cannot be decoded is skipped and counted (``"skipped"`` in the result), as in training. They are
resized (shorter side) and centre-cropped to ``size`` when given (the paper evaluates ImageNet-1K
val and COCO 2017 at the model's input size), reconstructed with
``pipeline.reconstruct(images, steps=, seed=) -> list[PIL.Image]``, and compared in [-1, 1].

Clips (``evaluate_clip_reconstruction``) come from a folder of clips or a clip manifest
(``data.video``), go through a video tokenizer's ``decode(encode(clips))`` (HYDRA-XTok), are
quantised to 8 bits as saved frames are, and get per-frame PSNR / SSIM and rFVD (``eval.fvd``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from hydra_umm.data.datasets import SkipCounter, UnreadableImage, load_image
from hydra_umm.data.manifest import read_manifest
from hydra_umm.data.transforms import IMAGE_EXTENSIONS, resize_crop, to_tensor, to_uint8
from hydra_umm.data.video import load_clips
from hydra_umm.eval.frechet import load_inception, rfid
from hydra_umm.eval.fvd import clip_reconstruction_metrics, load_i3d
from hydra_umm.eval.metrics import psnr, ssim


def image_paths(source: str | Path) -> list[Path]:
    """Image files of a folder (sorted) or the ``image`` paths of a JSONL manifest."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif source.is_file():
        paths = [Path(r["image"]) for r in read_manifest(source)]
    else:
        raise FileNotFoundError(f"no image folder or manifest at {source}")
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
    return paths


def load_images(source: str | Path, size: int | None = None, limit: int | None = None,
                skips: SkipCounter | None = None) -> list[Image.Image]:
    """The first ``limit`` readable images (RGB, :func:`load_image`) of a folder or manifest,
    optionally cropped to ``size``. Unreadable ones are skipped, logged and counted in ``skips``;
    ValueError when none is readable."""
    skips = SkipCounter() if skips is None else skips
    paths, images = image_paths(source), []
    for path in paths:
        if limit is not None and len(images) >= limit:
            break
        try:
            images.append(load_image(path))
        except UnreadableImage as e:
            skips.add(e)
    if not images and limit != 0:
        raise ValueError(f"none of the {len(paths)} images in {source} is readable")
    return [resize_crop(im, size) for im in images] if size else images


def reconstruct(pipeline: Any, images: Sequence[Image.Image], batch_size: int = 8, steps: int | None = None,
                seed: int = 0) -> list[Image.Image]:
    """``pipeline.reconstruct`` in batches; each reconstruction must have its input's size."""
    kwargs = {"seed": seed} | ({"steps": steps} if steps is not None else {})
    out: list[Image.Image] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        recon = list(pipeline.reconstruct(chunk, **kwargs))
        if len(recon) != len(chunk):
            raise ValueError(f"pipeline.reconstruct returned {len(recon)} images for {len(chunk)}")
        for original, r in zip(chunk, recon):
            if r.size != original.size:
                raise ValueError(f"reconstruction size {r.size} differs from input size {original.size}; pass size=")
        out.extend(recon)
    return out


def evaluate_reconstruction(
    pipeline: Any,
    source: str | Path | Sequence[Image.Image],
    inception_weights: str | Path | None = None,
    size: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, float]:
    """Mean PSNR (dB), mean SSIM and, when ``inception_weights`` is given, rFID over an image set.

    ``source``: a folder, a JSONL manifest or a list of PIL images. ``n`` counts the images compared,
    ``skipped`` the unreadable files passed over (:func:`load_images`). Without Inception weights the
    result has no ``"rfid"`` key; a path that does not exist raises ``FileNotFoundError``.
    """
    net = load_inception(inception_weights) if inception_weights is not None else None  # fail before sampling
    skips = SkipCounter()
    if isinstance(source, (str, Path)):
        images = load_images(source, size, limit, skips)
    else:
        images = [resize_crop(im, size) for im in source[:limit]] if size else list(source[:limit])
    originals = to_tensor(images)
    recons = to_tensor(reconstruct(pipeline, images, batch_size, steps, seed))
    result = {"n": float(len(images)), "skipped": float(skips.count), "psnr": psnr(originals, recons).mean().item(),
              "ssim": ssim(originals, recons).mean().item()}
    if net is not None:
        result["rfid"] = rfid(net, originals, recons, batch_size)
    return result


@torch.no_grad()
def evaluate_clip_reconstruction(
    tokenizer: Any,
    source: str | Path | torch.Tensor,
    frames: int,
    i3d_weights: str | Path | None = None,
    size: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    limit: int | None = None,
) -> dict:
    """Mean per-frame PSNR (dB) and SSIM, PSNR per frame index and, when ``i3d_weights`` is given,
    rFVD of ``tokenizer.decode(tokenizer.encode(clips), steps=, generator=)`` over clips of ``frames``
    frames: a clip folder, a clip manifest, or clips (n, 3, F, H, W) in [-1, 1]."""
    net = load_i3d(i3d_weights) if i3d_weights is not None else None  # fail before decoding
    if isinstance(source, (str, Path)):
        clips = load_clips(source, frames, size, limit)
    else:  # 8-bit like the loaded clips and the reconstructions, so that a perfect round trip scores inf
        if source.shape[2] != frames:
            raise ValueError(f"expected clips of {frames} frames, got {source.shape[2]} ({tuple(source.shape)})")
        clips = to_uint8(source[:limit]).float() / 127.5 - 1
    device = next(tokenizer.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    recons = []
    for chunk in clips.split(batch_size):
        recon = tokenizer.decode(tokenizer.encode(chunk.to(device)), steps=steps, generator=generator)
        if recon.shape != chunk.shape:
            raise ValueError(f"the tokenizer turned clips {tuple(chunk.shape)} into {tuple(recon.shape)}")
        recons.append(to_uint8(recon.cpu()).float() / 127.5 - 1)  # 8-bit frames
    return clip_reconstruction_metrics(clips, torch.cat(recons), net)
