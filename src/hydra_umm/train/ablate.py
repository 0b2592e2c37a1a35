"""`hydra-umm ablate xtok`: HYDRA-X's Table 1 on the shapes world in motion; `hydra-umm ablate edit`:
its Table 3 (STI against Indep editing, :func:`ablate_edit`).

HYDRA-XTok is trained once per attention pattern x temporal compression (full + single, causal +
hier, tubelet + hier, tubelet + single), every variant with the same preset, data, seed and
budget (``train_xtok`` stage 1 on still shapes images and clips in turn). Each is then measured:

- encode latency of a 17-frame clip (``bench.xtok``'s interleaved timing of fresh models of the
  same architecture: latency does not depend on the weights), and its ratio to full + single;
- image PSNR: held-out still shapes images through the tokenizer (8-bit, as saved);
- clip PSNR: held-out clips, per frame (``eval.reconstruction.evaluate_clip_reconstruction``).

The numbers go into ``<out>/ablation.json`` and an HTML page ``<out>/report/index.html`` (one
table per metric, a row per variant, and a reconstruction grid of one held-out clip: a row per
variant in the table's order, input frames | reconstructed frames).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from hydra_umm.bench.xtok import FRAMES as LATENCY_FRAMES
from hydra_umm.bench.xtok import VARIANTS as BENCH_VARIANTS
from hydra_umm.bench.xtok import encode_latencies
from hydra_umm.config import load_config
from hydra_umm.data.datasets import shapes_records
from hydra_umm.data.shapes import make_clip_dataset
from hydra_umm.data.transforms import ImageTransform, to_pil
from hydra_umm.data.video import load_clips
from hydra_umm.eval.reconstruction import evaluate_clip_reconstruction
from hydra_umm.eval.report import ReportContent, write_report
from hydra_umm.models.hydra_xtok import HydraXTok
from hydra_umm.train.recipes import train_xtok, train_xtok_stages
from hydra_umm.train.reuse import train_once

log = logging.getLogger(__name__)

# (attention, temporal compression) of the paper's Table 1; the first is the reference
VARIANTS: tuple[tuple[str, str], ...] = (("full", "single"), ("causal", "hier"), ("tubelet", "hier"),
                                         ("tubelet", "single"))


def variant_name(attention: str, compression: str) -> str:
    return f"{attention} + {compression}"


def filmstrip(clip: torch.Tensor) -> Image.Image:
    """A clip (3, F, H, W) in [-1, 1] as one image of its frames side by side."""
    return to_pil(clip.permute(0, 2, 1, 3).flatten(2))[0]  # (3, H, F * W)


def ablate_xtok(out: str | Path, steps: int, preset: str = "xtok-tiny", overrides: Sequence[str] = (),
                n_clips: int = 200, frames: int = 9, n_images: int = 500, latency_rounds: int = 5) -> Path:
    """Train and measure the variants (module docstring) under ``preset`` + ``overrides`` for
    ``steps`` steps each, on ``n_clips`` rendered clips of ``frames`` frames (written to
    ``<out>/clips``) and ``n_images`` still scenes; returns the report page. A variant's run folder
    is ``<out>/runs/<attention>-<compression>`` (a rerun resumes or reuses it)."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    out = Path(out)
    base = load_config(preset, list(overrides))
    size, seed = base.tokenizer.image_size, base.seed
    manifests = make_clip_dataset(out / "clips", n=n_clips, frames=frames, size=size, seed=seed,
                                  reuse=True)["manifests"]
    val_clips = load_clips(manifests["val"], frames)  # (n, 3, F, S, S)
    transform = ImageTransform(size)
    val_images = torch.stack([transform(r["image"]) for r in shapes_records(size, n_images, seed, "val")])

    figures = dict(zip(BENCH_VARIANTS, encode_latencies(preset, list(overrides), preset, latency_rounds)))
    reference = figures[VARIANTS[0]].value
    # a short budget: a higher peak rate than the presets' 1e-4 (overrides may change any of these)
    defaults = ["train.log_every=10", "train.val_every=0", "train.ckpt_every=0", "train.num_workers=0",
                f"train.warmup={steps // 10}", "train.lr.default=1e-3"]
    metrics: dict[str, dict[str, float]] = {
        f"encode latency, {LATENCY_FRAMES}-frame clip (ms)": {}, "latency / full + single": {},
        "image PSNR (dB)": {}, f"clip PSNR, {frames} frames (dB)": {},
    }
    tables = list(metrics.values())
    strips = []
    for attention, compression in VARIANTS:
        name = variant_name(attention, compression)
        run = [f"xtok.attention={attention}", f"xtok.temporal_compression={compression}", "stage=1",
               f"train.steps={steps}", f"data=shapes:{n_images},{manifests['train']}",
               f"train.out_dir={out / 'runs' / f'{attention}-{compression}'}"]
        log.info("ablation: training %s for %d steps", name, steps)
        tok = HydraXTok.from_pretrained(train_xtok(load_config(preset, [*defaults, *overrides, *run]))).eval()
        latency = figures[attention, compression].value
        tables[0][name], tables[1][name] = latency, latency / reference
        tables[2][name] = evaluate_clip_reconstruction(tok, val_images[:, :, None], frames=1, seed=seed)["psnr"]
        tables[3][name] = evaluate_clip_reconstruction(tok, val_clips, frames, seed=seed)["psnr"]
        with torch.no_grad():
            recon = tok.decode(tok.encode(val_clips[:1]))[0]
        strips.append((filmstrip(val_clips[0]), filmstrip(recon)))

    (out / "ablation.json").write_text(json.dumps({"steps": steps, "preset": preset, "overrides": list(overrides),
                                                   "frames": frames, "metrics": metrics}, indent=2) + "\n")
    order = ", ".join(variant_name(*v) for v in VARIANTS)
    title = f"HYDRA-XTok ablation (HYDRA-X Table 1), {steps} steps each; reconstruction rows: {order}"
    return write_report(ReportContent(title=title, reconstructions=strips, metrics=metrics), out / "report")


# ------------------------------------------------------------------------ `hydra-umm ablate edit`

EDIT_LAYOUT_NAMES = {"sti": "STI", "indep": "Indep"}


def ablate_edit(out: str | Path, steps: int, tok_steps: int, preset: str = "hydra-x-tiny",
                overrides: Sequence[str] = (), n_edits: int = 2000, n_eval: int = 70, frames: int = 9,
                n_clips: int = 100, n_images: int = 500) -> Path:
    """HYDRA-X's Table 3 on the shapes world: editing with source-target interaction (STI) against
    Indep at one budget. One HYDRA-XTok is trained for ``tok_steps`` (stage 1 on still scenes and
    ``n_clips`` clips, then stage 3 for a quarter of that: latent statistics and Sem-ViT); on it HYDRA-X trains for
    ``steps`` on ``n_edits`` shapes edits alone (stage II, every part but Gen-ViT), once per layout,
    everything else equal; each then edits ``n_eval`` held-out edits (the kinds in turn), scored by
    edit score and Recon-PSNR. Writes ``<out>/ablation.json`` and ``<out>/report/index.html`` (the
    tables and, per kind, source | STI | Indep | true target); returns the page. Runs are reused."""
    from hydra_umm.eval.benchmarks.shapes_edit import evaluate_shapes_edit, saved_views
    from hydra_umm.inference import HydraPipeline
    from hydra_umm.train.recipes import train_umm

    if steps < 1 or tok_steps < 1:
        raise ValueError(f"steps and tok_steps must be positive, got {steps}, {tok_steps}")
    out = Path(out)
    base = load_config(preset, list(overrides))
    size, seed = base.tokenizer.image_size, base.seed
    # as the HYDRA-X demo: no LPIPS (no VGG16 weights here; a random one costs most of a step) and no
    # video teacher (a random one teaches nothing)
    defaults = ["train.log_every=10", "train.val_every=0", "train.ckpt_every=0", "train.num_workers=0",
                "train.lr.default=1e-3", "tokenizer.lambda_lpips=0", "xtok.lambda_distill_video=0"]
    manifests = make_clip_dataset(out / "clips", n=n_clips, frames=frames, size=size, seed=seed,
                                  reuse=True)["manifests"]
    log.info("edit ablation: training HYDRA-XTok (stage 1 for %d steps, stage 3 for %d)", tok_steps, tok_steps // 4)
    tok_cfg = load_config(preset, [*defaults, *overrides, f"data=shapes:{n_images},{manifests['train']}",
                                   f"train.out_dir={out / 'runs' / 'xtok'}"])
    xtok_dir = train_xtok_stages(tok_cfg, {"1": tok_steps, "3": max(1, tok_steps // 4)})

    metrics: dict[str, dict[str, float]] = {"edit score": {}, "instruction followed": {}, "rest kept": {},
                                            "Recon-PSNR (dB)": {}}
    results: dict[str, list[dict]] = {}
    for layout, name in EDIT_LAYOUT_NAMES.items():
        run_dir = out / "runs" / layout
        run = ["stage=II", "train.ratios=[0,0,0,0,0,0,1]", f"umm.edit_layout={layout}", f"train.steps={steps}",
               f"train.warmup={steps // 10}", f"data=shapes-edits:{n_edits}", f"umm.tokenizer_path={xtok_dir}",
               f"train.out_dir={run_dir}"]
        log.info("edit ablation: training HYDRA-X with %s for %d steps", name, steps)
        model_dir = train_once(load_config(preset, [*defaults, *overrides, *run]), train_umm)
        result = evaluate_shapes_edit(HydraPipeline.from_pretrained(model_dir), n=n_eval, seed=seed,
                                      out_dir=out / "eval" / layout)
        overall = result["summary"]["overall"]
        for table, key in zip(metrics.values(), ("edit_score", "followed", "kept", "recon_psnr")):
            table[name] = overall[key]
        results[layout] = result["results"]

    examples = []  # one of each kind: the source and target as saved, each layout's output between them
    for i, row in enumerate(results["sti"][:7]):
        views = {layout: saved_views(out / "eval" / layout, i) for layout in EDIT_LAYOUT_NAMES}
        images = [views["sti"]["source"], *(v["edited"] for v in views.values()), views["sti"]["target"]]
        examples.append({"category": row["kind"], "prompt": row["instruction"], "images": images})
    (out / "ablation.json").write_text(json.dumps({"steps": steps, "tok_steps": tok_steps, "preset": preset,
                                                   "overrides": list(overrides), "n_eval": n_eval,
                                                   "metrics": metrics}, indent=2) + "\n")
    title = (f"HYDRA-X editing ablation (Table 3): STI vs Indep, {steps} steps each on {n_edits} shapes edits; "
             "samples: source | STI | Indep | target")
    return write_report(ReportContent(title=title, generations=examples, metrics=metrics), out / "report")
