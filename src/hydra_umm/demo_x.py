"""The HYDRA-X demo (`hydra-umm demo --video`, `hydra-umm demo --edit`): a small HYDRA-X trained and
shown on the shapes world on one CPU, apart from the 30-minute default demo.

    1. data: still scenes and shapes edits (in memory), clips of the shapes world in motion (written
       to ``<root>/clips`` for the tokenizer and the clip tasks)
    2. the semantic teacher (the default demo's, when it has one), HYDRA-XTok stages 1 and 3, then
       HYDRA-X stages I-III on images with the clip tasks (``video``) and/or the edits (``edit``)
    3. evaluation on held-out data: editing (edit score and Recon-PSNR, per kind; from noise, and from
       the source noised to t = 1 - XPlan.edit_strength), questions about clips (accuracy per type
       beside the majority answer), text-to-video (the clip scorer)
    4. the report ``<root>/report/index.html``: tables, edits as source | edited | target, generated
       clips as frame strips (and mp4s under ``<root>/eval/videos``)

``<root>`` is ``<out>/x`` (``<out>/x-fast`` for the fast plan). Finished steps are reused. There is
no video teacher here (``xtok.lambda_distill_video=0``): the clip features learn through HYDRA-X.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra_umm.config import Config, load_config
from hydra_umm.demo import DemoPlan
from hydra_umm.train.reuse import train_once

PRESET = "hydra-x-tiny"


@dataclass(frozen=True)
class XPlan:
    """How much the HYDRA-X demo does."""

    scenes: int
    clips: int  # all splits
    frames: int  # per clip, 1 + 4k
    edits: int  # training edits
    teacher_steps: int
    tokenizer_steps: dict[str, int]  # HYDRA-XTok stage -> steps
    umm_steps: dict[str, int]
    batch_size: int = 8
    eval_edits: int = 70  # ten of each kind
    # the second editing table's: from the source noised to t0 = 1 - strength (SDEdit's start). Chosen on
    # the val split's 70 edits (full plan, edit model): t0 = 0 / 0.3 / 0.5 / 0.7 gave edit score 0.00 /
    # 0.03 / 0.03 / 0.06, rest kept 0.14 / 0.47 / 0.53 / 0.57, Recon-PSNR 18.8 / 23.3 / 23.8 / 24.5 dB
    edit_strength: float = 0.3
    eval_clips: int = 24
    # text : caption : t2i : video caption : video instruction : instruction : edit : video t2i per
    # stage; ours, every task in every stage, as the default demo's (a random tiny LLM learns all from I on)
    ratios: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "I": (0, 1, 2, 1, 1, 1, 2, 1), "II": (0, 1, 2, 1, 1, 1, 2, 1), "III": (1, 1, 1, 1, 2, 2, 2, 1)})
    # from-scratch learning rates of the tiny HYDRA-XTok and the tiny Qwen2, as the default demo's (DemoPlan):
    # on the full plan, against 1e-3 and 1e-4, test PSNR rose from 18.4 to 19.6 dB, clip answers from 0.19 to 0.30.
    # The default demo's lambda_flow 10 too: against 1 (the full plan's HYDRA-X stages on one tokenizer),
    # Recon-PSNR of edits 15.1 -> 17.2 dB, clip answers 0.47 -> 0.43 (majority 0.48), edits and clips still 0
    tokenizer_overrides: tuple[str, ...] = ("train.lr.default=2e-3",)
    umm_overrides: tuple[str, ...] = DemoPlan.umm_overrides
    overrides: tuple[str, ...] = ("tokenizer.lambda_lpips=0", "xtok.lambda_distill_video=0")


X_PLANS = {
    # against 500 tokenizer and 600 HYDRA-X steps, in two runs: test PSNR 19.6 -> 25.2-25.6 dB, clip answers
    # 0.30 -> 0.47-0.50 (majority answer 0.48), Recon-PSNR of edits 13.0 -> 15.1-15.3 dB; 19 minutes on 2 CPU cores
    "full": XPlan(scenes=2000, clips=400, frames=9, edits=3000, teacher_steps=400,
                  tokenizer_steps={"1": 1500, "3": 100}, umm_steps={"I": 750, "II": 1500, "III": 750}),
    "fast": XPlan(scenes=200, clips=40, frames=5, edits=140, teacher_steps=20, tokenizer_steps={"1": 20, "3": 5},
                  umm_steps={"I": 10, "II": 10, "III": 10}, batch_size=4, eval_edits=7, eval_clips=4),
}
VIDEO_TASKS, EDIT_TASKS = (3, 4, 7), (6,)  # positions in XPlan.ratios
EDIT_FROM_SOURCE = "editing from the noised source"  # the second editing table (XPlan.edit_strength)


def _config(plan: XPlan, run: Path, *extra: str) -> Config:
    return load_config(PRESET, [*plan.overrides, f"train.out_dir={run}", f"train.batch_size={plan.batch_size}",
                                "train.num_workers=0", "train.val_every=0", "train.ckpt_every=0",
                                f"train.clip_frames={plan.frames}", *extra])


def demo_ratios(plan: XPlan, stage: str, video: bool, edit: bool) -> list[float]:
    """The plan's ratios of ``stage`` with the clip tasks (without ``video``) or edits (without ``edit``) at 0."""
    off = (() if video else VIDEO_TASKS) + (() if edit else EDIT_TASKS)
    return [0.0 if i in off else float(r) for i, r in enumerate(plan.ratios[stage])]


def train_x(root: Path, plan: XPlan, video: bool, edit: bool, say=print) -> Path:
    """Steps 1 and 2; returns the final HYDRA-X model directory."""
    from hydra_umm.data.shapes import make_clip_dataset
    from hydra_umm.train.recipes import train_umm, train_xtok_stages
    from hydra_umm.train.teacher import WEIGHTS_FILE, train_teacher

    size = load_config(PRESET).tokenizer.image_size
    if not (root / "clips" / "summary.json").is_file():
        say(f"[1/4] rendering {plan.clips} shapes clips of {plan.frames} frames into {root / 'clips'}")
    clips = make_clip_dataset(root / "clips", n=plan.clips, frames=plan.frames, size=size, seed=0, reuse=True)["manifests"]
    teacher = root.parent / "teacher" / WEIGHTS_FILE  # the default demo's
    if not teacher.is_file():
        teacher = root / "teacher" / WEIGHTS_FILE
        if not teacher.is_file():
            say(f"[2/4] training the semantic teacher ViT ({plan.teacher_steps} steps)")
            train_teacher(_config(plan, root / "teacher"), teacher.parent, steps=plan.teacher_steps,
                          n_scenes=plan.scenes, batch_size=plan.batch_size * 2, lr=1e-3)
    say(f"[2/4] HYDRA-XTok stages {', '.join(f'{s} ({n} steps)' for s, n in plan.tokenizer_steps.items())}")
    tok_cfg = _config(plan, root / "xtok", f"data=shapes:{plan.scenes},{clips['train']}",
                      f"tokenizer.teacher_weights={teacher}", "train.log_every=20", *plan.tokenizer_overrides)
    tokenizer = train_xtok_stages(tok_cfg, plan.tokenizer_steps)
    data = f"shapes:{plan.scenes},{clips['train']},shapes-edits:{plan.edits}"
    previous = ""
    tasks = "" if video and edit else "-video" if video else "-edit"  # a model per task set: each trains its own
    for stage, steps in plan.umm_steps.items():
        run = root / f"hydra-x-{stage}{tasks}"
        ratios = ",".join(map(str, demo_ratios(plan, stage, video, edit)))
        start = [f"init={previous}"] if previous else [f"umm.tokenizer_path={tokenizer}"]
        cfg = _config(plan, run, f"data={data}", f"stage={stage}", f"train.steps={steps}",
                      f"train.warmup={max(1, steps // 20)}", f"train.log_every={max(1, steps // 50)}",
                      f"train.ratios=[{ratios}]", *start, *plan.umm_overrides)
        previous = str(train_once(cfg, train_umm, lambda: say(f"[2/4] HYDRA-X stage {stage} ({steps} steps) in {run}")))
    return Path(previous)


def evaluate_x(root: Path, plan: XPlan, pipe, video: bool, edit: bool, say=print) -> tuple[dict, list, list]:
    """Step 3: the tables (written to ``<root>/eval/<name>.json``), report samples and answers."""
    from hydra_umm.data.shapes.motion import check_clip, clip_records
    from hydra_umm.data.video import write_clip
    from hydra_umm.eval.benchmarks.generation import EditSettings
    from hydra_umm.eval.benchmarks.shapes_edit import VIEWS, evaluate_shapes_edit, saved_views
    from hydra_umm.eval.benchmarks.shapes_vqa import evaluate_shapes_vqa

    say("[3/4] evaluating HYDRA-X on held-out edits and clips")
    tables, samples, answers = {}, [], []
    if edit:  # from noise (the paper's), then from the noised source
        for name, folder, strength in (("editing", "edits", 1.0),
                                       (EDIT_FROM_SOURCE, "edits-from-source", plan.edit_strength)):
            result = evaluate_shapes_edit(pipe, n=plan.eval_edits, out_dir=root / "eval" / folder,
                                          settings=EditSettings(strength=strength))
            tables[name] = {f"{kind} {k}": v for kind, row in result["summary"].items() for k, v in row.items()
                            if k != "n"}
            for i, row in enumerate(result["results"][:7]):  # one of each kind
                views = saved_views(root / "eval" / folder, i)
                samples.append({"category": f"{name.replace('editing', 'edit')}: {row['kind']}",
                                "prompt": row["instruction"], "images": [views[v] for v in VIEWS],
                                "score": float(row["correct"])})
    if video:
        records = clip_records(pipe.image_size, n=plan.clips, frames=plan.frames, seed=0, split="test")[:plan.eval_clips]
        vqa = evaluate_shapes_vqa(pipe, records, frames=plan.frames)
        tables["video understanding"] = {"overall": vqa["accuracy"], "majority baseline": vqa["majority_baseline"],
                                         **{t: v["accuracy"] for t, v in vqa["per_type"].items()}}
        answers = vqa["answers"][:8]
        clips = pipe.generate_video([r["caption"] for r in records], frames=plan.frames, seed=0)
        correct = [check_clip(frames, r["metadata"])["correct"] for frames, r in zip(clips, records)]
        tables["video generation"] = {"clip score": sum(correct) / len(correct), "n": len(correct)}
        for i, (frames, r, ok) in enumerate(zip(clips, records, correct)):
            write_clip(frames, root / "eval" / "videos" / f"{i:04d}.mp4")
            if i < 4:
                samples.append({"category": "text-to-video", "prompt": r["caption"], "images": frames,
                                "score": float(ok)})
    for name, table in tables.items():
        path = root / "eval" / f"{name.replace(' ', '_')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=2) + "\n")
    return tables, samples, answers


def run_demo_x(out: str | Path = "runs/demo", plan: str | XPlan = "full", video: bool = True, edit: bool = True,
               say=print) -> dict:
    """The HYDRA-X demo with a plan of :data:`X_PLANS` (in ``<out>/x``, ``<out>/x-<name>`` for any
    but "full") or one's own :class:`XPlan` (in ``<out>/x``); returns the evaluation tables."""
    from hydra_umm.eval.report import ReportContent, write_report
    from hydra_umm.inference import HydraPipeline

    if isinstance(plan, str) and plan not in X_PLANS:
        raise ValueError(f"unknown demo plan {plan!r}; plans: {', '.join(X_PLANS)}")
    if not (video or edit):
        raise ValueError("the HYDRA-X demo needs video and/or edit")
    start = time.perf_counter()
    root = Path(out) / ("x" if plan in ("full",) or isinstance(plan, XPlan) else f"x-{plan}")
    plan = X_PLANS[plan] if isinstance(plan, str) else plan
    model_dir = train_x(root, plan, video, edit, say)
    pipe = HydraPipeline.from_pretrained(model_dir)
    tables, samples, answers = evaluate_x(root, plan, pipe, video, edit, say)
    say("[4/4] writing the report")
    tasks = " and ".join(t for t, on in (("editing", edit), ("video", video)) if on)
    page = write_report(ReportContent(title=f"HYDRA-X on the shapes world: {tasks}", generations=samples,
                                      answers=answers, metrics=tables), root / "report")
    if edit:
        e, s = tables["editing"], tables[EDIT_FROM_SOURCE]
        say(f"\nediting: edit score {e['overall edit_score']:.2f}, Recon-PSNR {e['overall recon_psnr']:.1f} dB; "
            f"from the source noised to t = {1 - plan.edit_strength:.2f}: edit score {s['overall edit_score']:.2f}, "
            f"Recon-PSNR {s['overall recon_psnr']:.1f} dB")
    if video:
        u, g = tables["video understanding"], tables["video generation"]
        say(f"video questions: accuracy {u['overall']:.2f} (majority {u['majority baseline']:.2f}); "
            f"text-to-video clip score {g['clip score']:.2f}")
    say(f"report: {page}\nmodel: {model_dir}\ntook {time.perf_counter() - start:.0f} s")
    return tables
