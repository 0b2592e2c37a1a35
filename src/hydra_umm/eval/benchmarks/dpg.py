"""DPG-Bench writer (Hu et al. 2024, ELLA; code TencentQQGYLab/ELLA ``dpg_bench/``).

Prompts: a folder of ``<item_id>.txt`` files, one prompt each. Output: ``<out>/<item_id>.png``, a
2x2 grid of 4 images of ``resolution`` pixels each, row-major, because ``compute_dpg_bench.py``
takes the item id from the file name and crops the tiles (0,0), (r,0), (0,r), (r,r) at
``--resolution r --pic-num 4``. It lists every file of the folder as an image, so the writer puts
nothing else there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from hydra_umm.eval.benchmarks.generation import GenerationSettings, generate_images

GRID = 2


def grid_2x2(images: list[Image.Image], resolution: int) -> Image.Image:
    """Four images resized to ``resolution`` and tiled row-major into a (2r, 2r) RGB image."""
    if len(images) != GRID * GRID:
        raise ValueError(f"a DPG-Bench grid needs {GRID * GRID} images, got {len(images)}")
    grid = Image.new("RGB", (GRID * resolution, GRID * resolution))
    for i, image in enumerate(images):
        tile = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
        grid.paste(tile, ((i % GRID) * resolution, (i // GRID) * resolution))
    return grid


def read_dpg_prompts(prompts_dir: str | Path) -> dict[str, str]:
    """{item_id: prompt} from DPG-Bench's folder of .txt files, sorted by id."""
    folder = Path(prompts_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"DPG-Bench prompts folder not found: {folder}")
    prompts = {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))}
    if not prompts:
        raise ValueError(f"no .txt prompt files in {folder}")
    return prompts


def write_dpg(
    pipeline: Any,
    prompts_dir: str | Path,
    out_dir: str | Path,
    resolution: int = 512,
    settings: GenerationSettings = GenerationSettings(),
) -> Path:
    """Write one 2x2 grid per DPG-Bench prompt into ``out_dir`` (evaluate with --resolution
    ``resolution`` --pic-num 4); returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item_id, prompt in read_dpg_prompts(prompts_dir).items():
        images = generate_images(pipeline, prompt, GRID * GRID, settings)
        grid_2x2(images, resolution).save(out / f"{item_id}.png")
    return out
