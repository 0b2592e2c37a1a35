"""The HYDRA-X demo end to end on a micro plan: every step runs, the tables, report, clips and model
are written, a rerun reuses the finished steps, and the ratios switch tasks off by flag."""

import json

import pytest
import yaml

from hydra_umm.cli import main
from hydra_umm.demo_x import EDIT_FROM_SOURCE, X_PLANS, XPlan, demo_ratios, run_demo_x
from hydra_umm.train.recipes import X_RATIO_TASKS

from micro_plan import planned

MICRO = XPlan(scenes=40, clips=12, frames=5, edits=14, teacher_steps=2, tokenizer_steps={"1": 2, "3": 1},
              umm_steps={"I": 1, "II": 1, "III": 1}, batch_size=4, eval_edits=7, eval_clips=2)


def test_the_hydra_x_demo_runs_every_step_and_reuses_them(tmp_path):
    said = []
    tables = run_demo_x(tmp_path, MICRO, say=said.append)
    root = tmp_path / "x"
    assert set(tables) == {"editing", EDIT_FROM_SOURCE, "video understanding", "video generation"}
    for name in ("editing", EDIT_FROM_SOURCE):
        assert 0 <= tables[name]["overall edit_score"] <= 1 and tables[name]["overall recon_psnr"] > 0
    assert tables["editing"] != tables[EDIT_FROM_SOURCE]  # two different starts
    assert set(tables["video understanding"]) >= {"overall", "majority baseline"}
    n = tables["video generation"]["n"]  # the test split's clips, at most eval_clips
    assert 1 <= n <= 2 and len(list((root / "eval" / "videos").glob("*.mp4"))) == n
    assert json.loads((root / "eval" / "editing.json").read_text()) == tables["editing"]
    page = (root / "report" / "index.html").read_text()
    assert "edit: move" in page and "edit from the noised source: move" in page and "text-to-video" in page
    assert any(line.startswith("report: ") for line in said)
    for run, overrides in ((root / "xtok" / "stage-1", MICRO.tokenizer_overrides),
                           (root / "hydra-x-I", MICRO.umm_overrides)):  # the plan's learning rates
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]["default"] == planned(overrides)
    again = []
    run_demo_x(tmp_path, MICRO, say=again.append)
    assert not any("HYDRA-X stage" in line or "rendering" in line for line in again)  # reused
    video_only = []
    assert set(run_demo_x(tmp_path, MICRO, edit=False, say=video_only.append)) == {"video understanding",
                                                                                   "video generation"}
    assert any("HYDRA-X stage I" in line for line in video_only)  # not the model trained with edits too
    assert (root / "hydra-x-III-video" / "model").is_dir()


def test_ratios_switch_tasks_off_and_plans_are_checked():
    plan = X_PLANS["full"]
    edit_only = dict(zip(X_RATIO_TASKS, demo_ratios(plan, "I", video=False, edit=True)))
    assert edit_only["edit"] > 0 and edit_only["video_caption"] == edit_only["video_t2i"] == 0
    video_only = dict(zip(X_RATIO_TASKS, demo_ratios(plan, "III", video=True, edit=False)))
    assert video_only["edit"] == 0 and video_only["video_instruction"] > 0
    with pytest.raises(ValueError, match="unknown demo plan"):
        run_demo_x("unused", "huge")
    with pytest.raises(SystemExit):
        main(["demo", "--video", "--fast", "--bogus"])
    with pytest.raises(SystemExit, match="leave out --video"):
        main(["demo", "--edit", "--ablation"])
