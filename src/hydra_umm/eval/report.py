"""One HTML page (plus PNG files beside it) that shows what a run does.

Sections: reconstruction grid (input | reconstruction), generated images per prompt category with
their scores, answers beside questions, metric tables, and training curves. Images are files in
``<out>/assets/`` referenced by relative paths, so the folder can be moved or served as is.

Training curves come from the run's TensorBoard event files (read with tensorboard's
``EventAccumulator``) or, failing those, from JSONL logs in the run folder whose records carry a
``"step"``; metric tables from flat ``{name: number}`` JSON files under ``<run>/eval/``.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from hydra_umm.eval.benchmarks.generation import GenerationSettings, generate_images  # noqa: E402
from hydra_umm.eval.benchmarks.shapes_vqa import evaluate_shapes_vqa  # noqa: E402
from hydra_umm.eval.reconstruction import reconstruct  # noqa: E402

Curve = list[tuple[int, float]]  # (step, value)
Curves = dict[str, Curve]
Panels = Mapping[str, Curve | Mapping[str, Curve]]  # tag -> one curve, or named curves drawn together
ASSETS = "assets"


@dataclass
class ReportContent:
    """Everything the page shows; every field may be empty."""

    title: str = "HYDRA run report"
    reconstructions: list[tuple[Image.Image, Image.Image]] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)  # {"category", "prompt", "images": [PIL], "score"?}
    # {"image": PIL | path, "question", "answer", "prediction", "correct"?}
    answers: list[dict] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # table -> {metric: value}
    curves: Panels = field(default_factory=dict)  # tag -> [(step, value)], or name -> [(step, value)]


def read_scalars(run_dir: str | Path) -> Curves:
    """Scalar curves of a run: TensorBoard event files anywhere under ``run_dir`` (tags of sub-folders
    prefixed by the folder), else top-level ``*.jsonl`` logs with a ``"step"`` in each record."""
    run = Path(run_dir)
    event_dirs = sorted({p.parent for p in run.rglob("events.out.tfevents.*")})
    curves: Curves = {}
    if event_dirs:
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

        for folder in event_dirs:
            acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
            acc.Reload()
            prefix = "" if folder == run else f"{folder.relative_to(run).as_posix()}/"
            for tag in acc.Tags()["scalars"]:
                curves[prefix + tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        return curves
    for log in sorted(run.glob("*.jsonl")):
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if "step" not in record:
                continue
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    curves.setdefault(key, []).append((int(record["step"]), float(value)))
    return curves


def read_metric_tables(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """Flat numeric JSON files under ``<run>/eval/``, one table per file (named by its stem)."""
    tables = {}
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            numbers = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numbers:
                tables[path.stem] = numbers
    return tables


def plot_curves(curves: Panels, path: Path) -> Path:
    """One small panel per tag, value against step; a tag maps to one curve, or to named curves drawn
    as labelled lines in the same panel (e.g. one per model)."""
    tags = sorted(curves)
    cols = min(3, len(tags))
    rows = (len(tags) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(tags):]:
        ax.axis("off")
    for ax, tag in zip(axes.flat, tags):
        lines = curves[tag] if isinstance(curves[tag], Mapping) else {"": curves[tag]}
        for name, points in lines.items():
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, lw=1.2, label=name or None)
        if any(lines):
            ax.legend(fontsize=7)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reconstruction_grid(rows: Sequence[Sequence[Image.Image]], path: Path) -> Path:
    """Rows of images side by side (input | reconstruction [| another model's ...]), each tile at the
    first input's size, 4 px gutters."""
    w, h = rows[0][0].size
    gap, cols = 4, max(len(row) for row in rows)
    grid = Image.new("RGB", (cols * (w + gap) - gap, len(rows) * (h + gap) - gap), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((w, h)), (c * (w + gap), r * (h + gap)))
    grid.save(path)
    return path


def _img(src: str, alt: str, width: int | None = 128) -> str:
    size = "" if width is None else f' width="{width}"'
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{size}>'


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    return "&mdash;" if value is None else html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))


def page_html(title: str, parts: Sequence[str]) -> str:
    """A whole HTML page: the title, the report style, and the body ``parts`` in order."""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}img{image-rendering:pixelated}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}'
            f"</title>\n<style>{style}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(content: ReportContent, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/index.html`` and its images under ``<out_dir>/assets/``; returns the page path."""
    out = Path(out_dir)
    (out / ASSETS).mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(content.title)}</h1>"]

    if content.reconstructions:
        reconstruction_grid(content.reconstructions, out / ASSETS / "reconstructions.png")
        parts.append("<h2>Reconstruction (input | reconstruction)</h2>")
        parts.append(_img(f"{ASSETS}/reconstructions.png", "input | reconstruction", 2 * 160))

    if content.generations:
        parts.append("<h2>Generation</h2>")
        by_category: dict[str, list[tuple[int, dict]]] = {}
        for i, gen in enumerate(content.generations):
            by_category.setdefault(str(gen.get("category", "uncategorised")), []).append((i, gen))
        for category, gens in sorted(by_category.items()):
            rows = []
            for i, gen in gens:
                cells = []
                for j, image in enumerate(gen["images"]):
                    name = f"{ASSETS}/gen_{i:04d}_{j}.png"
                    image.save(out / name)
                    cells.append(_img(name, gen["prompt"]))
                rows.append([html.escape(gen["prompt"]), " ".join(cells), _fmt(gen.get("score"))])
            parts.append(f"<h3>{html.escape(category)}</h3>" + _table(rows, ["prompt", "samples", "score"]))

    if content.answers:
        rows = []
        for i, qa in enumerate(content.answers):
            image = qa["image"]
            image = image if isinstance(image, Image.Image) else Image.open(image)
            name = f"{ASSETS}/qa_{i:04d}.png"
            image.convert("RGB").save(out / name)
            rows.append([_img(name, qa["question"], 96), html.escape(qa["question"]), html.escape(str(qa["answer"])),
                         html.escape(str(qa["prediction"])), _fmt(qa.get("correct"))])
        parts.append("<h2>Understanding</h2>" + _table(rows, ["image", "question", "answer", "model", "correct"]))

    if content.metrics:
        parts.append("<h2>Metrics</h2>")
        for name, table in content.metrics.items():
            rows = [[html.escape(k), _fmt(v)] for k, v in table.items()]
            parts.append(f"<h3>{html.escape(name)}</h3>" + _table(rows, ["metric", "value"]))

    if content.curves:
        plot_curves(content.curves, out / ASSETS / "curves.png")
        parts.append("<h2>Training curves</h2>" + _img(f"{ASSETS}/curves.png", "training curves", None))

    index = out / "index.html"
    index.write_text(page_html(content.title, parts), encoding="utf-8")
    return index


def report_run(
    run_dir: str | Path,
    pipeline: Any = None,
    images: Sequence[Image.Image] = (),
    prompts: Sequence[dict] = (),
    qa_records: Sequence[dict] = (),
    out_dir: str | Path | None = None,
    n_samples: int = 2,
    settings: GenerationSettings = GenerationSettings(),
    scorer: Any = None,
    curves: Panels | None = None,
) -> Path:
    """Build the report of a run into ``out_dir`` (default ``<run>/report``).

    With a ``pipeline``: reconstructs ``images``, generates ``n_samples`` images for each prompt
    record (``{"prompt", "tag"}``: GenEval-style metadata, ``tag`` = category) and, when
    ``scorer(image, metadata) -> float`` is given, scores each sample (the mean is shown); answers
    the questions of ``qa_records`` (manifest records with ``qa``) and adds their accuracy table.
    Metric tables are read from ``run_dir`` in every case, and so are the training curves unless
    ``curves`` gives them (default: every TensorBoard scalar under the run, :func:`read_scalars`).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    content = ReportContent(title=f"HYDRA run report: {run.name}",
                            curves=read_scalars(run) if curves is None else curves, metrics=read_metric_tables(run))
    if pipeline is not None and images:
        content.reconstructions = list(zip(images, reconstruct(pipeline, images)))
    if pipeline is not None:
        for meta in prompts:
            samples = generate_images(pipeline, meta["prompt"], n_samples, settings)
            score = sum(float(scorer(im, meta)) for im in samples) / n_samples if scorer else None
            content.generations.append({"category": meta.get("tag", "uncategorised"), "prompt": meta["prompt"],
                                        "images": samples, "score": score})
    if pipeline is not None and qa_records:
        vqa = evaluate_shapes_vqa(pipeline, qa_records)
        content.answers = vqa["answers"]
        table = {"overall": vqa["accuracy"], "majority baseline": vqa["majority_baseline"]}
        table.update({qtype: v["accuracy"] for qtype, v in vqa["per_type"].items()})
        content.metrics[f"understanding of the {len(qa_records)} images shown (accuracy)"] = table
    return write_report(content, out_dir or run / "report")
