"""Shapes-world editing, scored in-process: held-out edits of every kind (``data.shapes.edits``),
edited by the pipeline, judged object by object (edit score: the instruction carried out and the
rest kept) with Recon-PSNR over the unedited region, HYDRA-X's consistency figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from PIL import Image
from tqdm import tqdm

from hydra_umm.data.shapes.edits import EXACT_PSNR, sample_edits, score_edit, summarize_edits
from hydra_umm.data.shapes.render import render
from hydra_umm.eval.benchmarks.generation import EditSettings, edit_images


VIEWS = ("source", "edited", "target")  # the images saved per edit, in this order


def saved_views(out_dir: str | Path, index: int) -> dict[str, Image.Image]:
    """The images :func:`evaluate_shapes_edit` saved for edit number ``index`` under ``out_dir``, by view."""
    return {name: Image.open(Path(out_dir) / f"{index:04d}_{name}.png").convert("RGB") for name in VIEWS}


def evaluate_shapes_edit(pipeline: Any, n: int = 70, seed: int = 0, split: str = "test",
                         out_dir: Optional[str | Path] = None, settings: EditSettings = EditSettings(),
                         batch_size: int = 16) -> dict:
    """Edit ``n`` shapes-world edits of ``split`` (the kinds in turn) and score them: ``summary`` (per
    kind and overall: edit_score, followed, kept, recon_psnr) and ``results`` (one per edit, with its
    instruction). With ``out_dir``, each edit's source, output and true target go to
    ``<out_dir>/<index>_{source,edited,target}.png`` and everything to ``results.json``."""
    edits = sample_edits(n, seed, split)
    size = pipeline.image_size
    results = []
    for start in tqdm(range(0, n, batch_size), desc="shapes edits", unit="batch"):
        chunk = edits[start: start + batch_size]
        sources = [render(e.source, size) for e in chunk]
        edited = edit_images(pipeline, sources, [e.instruction for e in chunk], settings)
        for i, (edit, source, output) in enumerate(zip(chunk, sources, edited), start=start):
            results.append({**score_edit(output, edit, source), "instruction": edit.instruction})
            if out_dir is not None:
                folder = Path(out_dir)
                folder.mkdir(parents=True, exist_ok=True)
                for name, image in zip(VIEWS, (source, output, render(edit.target, size))):
                    image.save(folder / f"{i:04d}_{name}.png")
    out = {"summary": summarize_edits(results), "results": results}
    if out_dir is not None:  # standard JSON: an exact copy's infinite Recon-PSNR written as EXACT_PSNR
        written = [{**r, "recon_psnr": min(r["recon_psnr"], EXACT_PSNR)} for r in results]
        (Path(out_dir) / "results.json").write_text(json.dumps({**out, "results": written}, indent=2, allow_nan=False))
    return out
