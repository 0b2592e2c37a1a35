"""`hydra-umm compare` (`make compare`): HYDRA against Harmon on the shapes world, one budget, one report.

Both models train in the demo's folder, on the demo's data, with the same tiny Qwen2 and, stage by
stage, the same steps, batch size, instruction : caption : text-to-image ratios and overrides
(``DemoPlan.umm_overrides``: the learning rate of the LLM trained from scratch, and HYDRA's flow-loss
weight ``umm.lambda_flow``, which Harmon's losses do not read):

    HYDRA    the demo's runs (reused when they exist): semantic teacher, HYDRA-TOK stages 1-2,
             HYDRA stages I-III
    Harmon   its KL autoencoder for as many steps as HYDRA-TOK's stages together (``harmon-vae``, at
             its own from-scratch learning rate: ``HARMON_VAE_OVERRIDES``),
             then the unified model for HYDRA's stages I-III (``harmon-I`` .. ``harmon-III``), each
             run continuing the last. Harmon's code has no stages: these only follow HYDRA's data
             schedule; every Harmon parameter but the autoencoder's trains in each.

Each model is then evaluated as the demo evaluates HYDRA (``<out>/eval`` for HYDRA,
``<out>/harmon/eval`` for Harmon), and ``<out>/compare/index.html`` shows both side by side:
metrics with the better model per row, reconstructions, images per prompt, answers, training
curves, training wall time and parameter counts; ``<out>/compare/compare.json`` holds the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from hydra_umm.demo import (
    DemoPlan, evaluate_all, make_data, report_prompts, resolve_plan, stage_config, train_all,
)
from hydra_umm.eval.comparison import ComparedModel, metric_rows, write_comparison
from hydra_umm.eval.report import Curve, Curves
from hydra_umm.train.reuse import train_once

MODELS = {"hydra": "HYDRA", "harmon": "Harmon"}  # --models name -> name shown
SHOWN_IMAGES = 8  # reconstructions and questions shown in the report
# The KL autoencoder from scratch, like HYDRA-TOK's stage 1 (DemoPlan.tokenizer_overrides), at its own best
# peak lr: test PSNR after the full plan's 1650 steps was 21.0 / 29.1 / 27.9 dB at 1e-4 / 1e-3 / 2e-3.
HARMON_VAE_OVERRIDES = ("train.lr.default=1e-3",)


def parse_models(names: str | Sequence[str]) -> list[str]:
    """``"hydra,harmon"`` (or a list) -> the model names, each known and given once."""
    models = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in models if n not in MODELS]
    if unknown or not models or len(set(models)) != len(models):
        raise ValueError(f"--models takes distinct names from {', '.join(MODELS)}; got {','.join(models) or 'none'}")
    return models


def harmon_runs(plan: DemoPlan) -> dict[str, list[str]]:
    """Harmon's run folders per phase, relative to the demo folder."""
    return {"autoencoder": ["harmon-vae"], "unified": [f"harmon-{stage}" for stage in plan.umm_steps]}


def hydra_runs(plan: DemoPlan) -> dict[str, list[str]]:
    """HYDRA's run folders per phase (the demo's), relative to the demo folder."""
    return {"teacher": ["teacher"], "tokenizer": [f"tokenizer-{stage}" for stage in plan.tokenizer_steps],
            "unified": [f"hydra-{stage}" for stage in plan.umm_steps]}


def train_harmon_runs(out: Path, plan: DemoPlan, say=print) -> Path:
    """Harmon on the demo's data and budget (see the module docstring); returns the last model."""
    from hydra_umm.models.harmon.vae import WEIGHTS_FILE
    from hydra_umm.train.recipes import train_harmon

    data = make_data(out, plan, say)
    runs = harmon_runs(plan)
    vae = out / runs["autoencoder"][0]
    steps = sum(plan.tokenizer_steps.values())
    cfg = stage_config(plan, data, vae, "vae", steps, *HARMON_VAE_OVERRIDES, preset="harmon-tiny")
    train_once(cfg, train_harmon, lambda: say(f"[2/4] Harmon's KL autoencoder ({steps} steps)"), WEIGHTS_FILE)
    previous = ""
    for (stage, steps), name in zip(plan.umm_steps.items(), runs["unified"]):
        run = out / name
        extra = [f"init={previous}"] if previous else [f"harmon.vae_path={vae / 'model'}"]
        extra += [f"train.ratios=[{','.join(map(str, plan.umm_ratios[stage]))}]", *plan.umm_overrides]
        cfg = stage_config(plan, data, run, "unified", steps, *extra, preset="harmon-tiny")
        previous = train_once(cfg, train_harmon, lambda: say(f"[2/4] Harmon for HYDRA's stage {stage} ({steps} "
                                                              f"steps) in {run}"))
    return previous


# --------------------------------------------------------------------------- what the runs cost


def run_scalars(out: Path, runs: dict[str, list[str]]) -> dict[str, Curves]:
    """The TensorBoard scalars of every run (read once: a run's events are a few MB)."""
    from hydra_umm.eval.report import read_scalars

    return {name: read_scalars(out / name / "tensorboard") for names in runs.values() for name in names}


def training_seconds(out: Path, runs: dict[str, list[str]], scalars: dict[str, Curves]) -> dict[str, float]:
    """Training wall time per phase (the Trainer's ``time/train_seconds`` in ``scalars``, the teacher's
    own record) and in total; a run without a record (trained before it was kept) counts as NaN."""
    from hydra_umm.train.teacher import METRICS_FILE

    seconds = {}
    for phase, names in runs.items():
        total = 0.0
        for name in names:
            if phase == "teacher":
                record = out / name / METRICS_FILE
                total += json.loads(record.read_text())["seconds"] if record.is_file() else float("nan")
            else:
                curve = scalars[name].get("time/train_seconds")
                total += curve[-1][1] if curve else float("nan")
        seconds[phase] = total
    seconds["total"] = sum(seconds.values())
    return seconds


# report panel -> (phase, TensorBoard tag) per model; a panel both models fill gets a line for each
CURVES = {
    "hydra": {"tokenizer: val L1 reconstruction": ("tokenizer", "val/loss_l1"),
              "stages I-III: train/loss_ntp": ("unified", "train/loss_ntp"),
              "stages I-III: val/loss_ntp": ("unified", "val/loss_ntp"),
              "stages I-III: train/loss_flow (HYDRA)": ("unified", "train/loss_flow"),
              "stages I-III: val/loss_flow (HYDRA)": ("unified", "val/loss_flow")},
    "harmon": {"tokenizer: val L1 reconstruction": ("autoencoder", "val/loss_rec"),
               "stages I-III: train/loss_ntp": ("unified", "train/loss_ntp"),
               "stages I-III: val/loss_ntp": ("unified", "val/loss_ntp"),
               "stages I-III: train/loss_diff (Harmon)": ("unified", "train/loss_diff"),
               "stages I-III: val/loss_diff (Harmon)": ("unified", "val/loss_diff")},
}


def loss_curves(runs: dict[str, list[str]], scalars: dict[str, Curves],
                panels: dict[str, tuple[str, str]]) -> dict[str, Curve]:
    """Each panel's ``(phase, tag)`` curve over the phase's runs, one after another on one step axis."""
    curves: dict[str, Curve] = {}
    for panel, (phase, tag) in panels.items():
        offset, curve = 0, []
        for name in runs[phase]:
            curve += [(offset + step, value) for step, value in scalars[name].get(tag, [])]
            offset += max((step for points in scalars[name].values() for step, _ in points), default=0)
        if curve:
            curves[panel] = curve
    return curves


def parameter_counts(model) -> dict[str, int]:
    """Parameters the model generates and answers with (HYDRA-TOK's teacher and discriminator, which
    only train it, left out): in total, in the LLM, and on the visual side (the rest)."""
    used = {name: p.numel() for name, p in model.named_parameters()
            if not {"teacher", "discriminator"} & set(name.split("."))}
    llm = sum(n for name, n in used.items() if name.startswith("llm."))
    return {"total": sum(used.values()), "LLM": llm, "visual side": sum(used.values()) - llm}


# ------------------------------------------------------------------------------------ the job


def run_compare(models: str | Sequence[str] = "hydra,harmon", out: str | Path = "runs/demo",
                plan: str | DemoPlan = "full", say=print) -> dict:
    """Train (or reuse) each model, evaluate it, write the side-by-side report; returns
    ``{model: {"results", "seconds", "parameters"}}`` (also ``<out>/compare/compare.json``).
    ``plan`` as in :func:`hydra_umm.demo.run_demo`: any plan but "full" runs in ``<out>/<plan>``."""
    from hydra_umm.data.manifest import read_manifest
    from hydra_umm.eval import load_images
    from hydra_umm.eval.benchmarks.generation import GenerationSettings, generate_images
    from hydra_umm.eval.benchmarks.shapes_geneval import score_shapes_image
    from hydra_umm.eval.benchmarks.shapes_vqa import evaluate_shapes_vqa
    from hydra_umm.eval.reconstruction import reconstruct
    from hydra_umm.inference import HarmonPipeline, HydraPipeline

    names = parse_models(models)
    out, plan = resolve_plan(out, plan)
    make_data(out, plan, say)
    data_dir = out / "data"
    prompts = report_prompts(out, plan)
    qa_records = read_manifest(data_dir / "test.jsonl")[: SHOWN_IMAGES // 2]
    settings = GenerationSettings(seed=0)

    compared, inputs, questions = [], [], []
    for name in names:
        if name == "hydra":
            pipe, into = HydraPipeline.from_pretrained(train_all(out, plan, say)), out
            runs = hydra_runs(plan)
        else:
            pipe, into = HarmonPipeline.from_pretrained(train_harmon_runs(out, plan, say)), out / "harmon"
            runs = harmon_runs(plan)
        results, scalars = evaluate_all(out, plan, pipe, say, into=into), run_scalars(out, runs)
        say(f"[4/4] {MODELS[name]}: samples for the report")
        inputs = load_images(data_dir / "test.jsonl", pipe.image_size, SHOWN_IMAGES)
        generations = [generate_images(pipe, meta["prompt"], plan.samples_per_prompt, settings) for meta in prompts]
        questions = evaluate_shapes_vqa(pipe, qa_records)["answers"]  # with this model's predictions
        compared.append(ComparedModel(
            name=MODELS[name], results=results, reconstructions=reconstruct(pipe, inputs), generations=generations,
            generation_scores=[sum(score_shapes_image(im, meta) for im in images) / len(images)
                               for images, meta in zip(generations, prompts)],
            answers=[qa["prediction"] for qa in questions],
            curves=loss_curves(runs, scalars, CURVES[name]), seconds=training_seconds(out, runs, scalars),
            parameters=parameter_counts(pipe.model),
        ))

    page = write_comparison(compared, inputs, prompts, questions, out / "compare")
    summary = {m.name: {"results": m.results, "seconds": m.seconds, "parameters": m.parameters} for m in compared}
    (out / "compare" / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    width = max(len(label) for label, *_ in metric_rows(compared))
    say(f"\n{'':{width}}  " + "  ".join(f"{m.name:>8}" for m in compared))
    for label, values, best in metric_rows(compared):
        say(f"{label:{width}}  " + "  ".join(f"{v:8.3f}" for v in values) + (f"  {best}" if best else ""))
    say("training seconds: " + ", ".join(f"{m.name} {m.seconds['total']:.0f}" for m in compared))
    say(f"report: {page}")
    return summary
