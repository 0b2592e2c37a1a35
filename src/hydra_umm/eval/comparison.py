"""The side-by-side report of ``hydra-umm compare``: one HTML page over several trained models.

Sections: metrics (every metric all models have, the better model per row), training cost (wall
time per phase, parameter counts), reconstructions (input | each model), images per prompt with
their scores, answers beside the questions, and the training curves (one line per model where the
models share a curve). Images are files under ``<out>/assets/``, as in :mod:`hydra_umm.eval.report`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from hydra_umm.eval.report import ASSETS, Curve, _fmt, _img, _table, page_html, plot_curves, reconstruction_grid


@dataclass
class ComparedModel:
    """One trained model's part of the comparison."""

    name: str
    results: dict[str, dict[str, float]]  # evaluation table -> metric -> value, higher is better
    reconstructions: list[Image.Image]  # of the report's input images, in order
    generations: list[list[Image.Image]]  # samples per prompt
    generation_scores: list[float]  # per prompt, the mean over its samples
    answers: list[str]  # per question
    curves: dict[str, Curve]  # panel -> (step, value) points
    seconds: dict[str, float]  # training phase -> wall seconds, and "total"
    parameters: dict[str, int]  # "total", "LLM", "visual side"


def _baseline(metric: str) -> bool:
    """A baseline row (a majority answer, a chance level), which no model wins."""
    return "majority" in metric or "chance" in metric


def metric_rows(models: Sequence[ComparedModel]) -> list[tuple[str, list[float], str]]:
    """``(table: metric, value per model, the better model)`` for every metric all models report, in
    the first model's order (sample counts left out). Every metric here is better higher (PSNR, SSIM,
    accuracy, CKNNA); the better model is "" for a tie, a single model and the baselines (majority
    answers, chance levels)."""
    rows = []
    for table, metrics in models[0].results.items():
        for metric in metrics:
            if metric == "n" or not all(metric in m.results.get(table, {}) for m in models):
                continue
            values = [float(m.results[table][metric]) for m in models]
            best = max(values)
            winners = [m.name for m, v in zip(models, values) if v == best]
            better = winners[0] if len(models) > 1 and len(winners) == 1 and not _baseline(metric) else ""
            rows.append((f"{table}: {metric}", values, better))
    return rows


def write_comparison(
    models: Sequence[ComparedModel],
    inputs: Sequence[Image.Image],
    prompts: Sequence[dict],
    questions: Sequence[dict],
    out_dir: str | Path,
) -> Path:
    """Write ``<out_dir>/index.html``. ``inputs`` are the images each model reconstructed, ``prompts``
    the GenEval-style records (``prompt``, ``tag``) each generated for, ``questions`` the VQA items
    (``image`` path, ``question``, ``answer``) each answered; returns the page path."""
    out = Path(out_dir)
    (out / ASSETS).mkdir(parents=True, exist_ok=True)
    names = [m.name for m in models]
    parts = [f"<h1>{html.escape(' vs '.join(names))} on the shapes world</h1>"]

    rows = []
    for label, values, better in metric_rows(models):
        cells = [f"<b>{_fmt(v)}</b>" if better and m.name == better else _fmt(v) for m, v in zip(models, values)]
        rows.append([html.escape(label), *cells, html.escape(better)])
    parts.append("<h2>Metrics (held-out test split)</h2>" + _table(rows, ["metric", *names, "better"]))

    phases = list(dict.fromkeys(p for m in models for p in m.seconds if p != "total"))
    rows = [[f"training seconds: {html.escape(p)}", *(_fmt(m.seconds.get(p)) for m in models)] for p in phases]
    rows.append(["training seconds: total", *(_fmt(m.seconds["total"]) for m in models)])
    rows += [[f"parameters: {html.escape(k)}", *(f"{m.parameters[k]:,}" for m in models)] for k in models[0].parameters]
    parts.append("<h2>Training cost</h2>" + _table(rows, ["", *names]))

    grid = [[image, *(m.reconstructions[i] for m in models)] for i, image in enumerate(inputs)]
    reconstruction_grid(grid, out / ASSETS / "reconstructions.png")
    parts.append(f"<h2>Reconstruction (input | {html.escape(' | '.join(names))})</h2>"
                 + _img(f"{ASSETS}/reconstructions.png", "reconstructions", (len(models) + 1) * 160))

    rows = []
    for i, meta in enumerate(prompts):
        cells = []
        for k, m in enumerate(models):
            shown = []
            for j, image in enumerate(m.generations[i]):
                name = f"{ASSETS}/gen_{i:03d}_{k}_{j}.png"
                image.save(out / name)
                shown.append(_img(name, meta["prompt"], 96))
            cells.append(" ".join(shown) + f"<br>score {_fmt(m.generation_scores[i])}")
        rows.append([html.escape(meta.get("tag", "")), html.escape(meta["prompt"]), *cells])
    parts.append("<h2>Generation</h2>" + _table(rows, ["category", "prompt", *names]))

    rows = []
    for i, qa in enumerate(questions):
        name = f"{ASSETS}/qa_{i:03d}.png"
        Image.open(qa["image"]).convert("RGB").save(out / name)
        rows.append([_img(name, qa["question"], 96), html.escape(qa["question"]), html.escape(str(qa["answer"])),
                     *(html.escape(m.answers[i]) for m in models)])
    parts.append("<h2>Understanding</h2>" + _table(rows, ["image", "question", "answer", *names]))

    panels: dict[str, dict[str, Curve]] = {}
    for m in models:
        for panel, curve in m.curves.items():
            panels.setdefault(panel, {})[m.name] = curve
    if panels:
        plot_curves(panels, out / ASSETS / "curves.png")
        parts.append("<h2>Training curves</h2>" + _img(f"{ASSETS}/curves.png", "training curves", None))

    index = out / "index.html"
    index.write_text(page_html(" vs ".join(names), parts), encoding="utf-8")
    return index
