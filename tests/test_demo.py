"""The main job end to end with a micro plan (a few steps per stage, 32 px): every stage runs, the
report and the metric tables are written, and a second run reuses what the first trained."""

import dataclasses
import json

import pytest
import yaml

from hydra_umm.config import load_config
from hydra_umm.demo import CHANCE, run_demo, training_curves

from micro_plan import MICRO, planned


def test_demo_runs_every_stage_and_reuses_them(micro_demo, monkeypatch):
    tmp_path, results, said = micro_demo
    assert set(results) == {"reconstruction", "generation", "understanding", "alignment", "conditioning"}
    assert {"t=0.05 caption", "t=0.05 empty prompt"} <= set(results["conditioning"])
    assert {"overall", "single_object", "colors", CHANCE} <= set(results["generation"])
    assert "majority baseline" in results["understanding"] and "generation vs understanding" in results["alignment"]
    for name in results:
        assert json.loads((tmp_path / "eval" / f"{name}.json").read_text()) == results[name]
    assert (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "model" / "model.safetensors").is_file()  # the link to the last stage's model
    assert any(line.startswith("report:") for line in said)
    trained = [line for line in said if line.startswith("[2/4]")]
    assert len(trained) == 6  # teacher, tokenizer 1-2, HYDRA I-III
    config = yaml.safe_load((tmp_path / "hydra-I" / "config.yaml").read_text())
    assert config["train"]["lr"]["default"] == planned(MICRO.umm_overrides) != load_config("tiny").train.lr.default
    lambda_flow = planned(MICRO.umm_overrides, "umm.lambda_flow")
    for stage in ("I", "III"):  # every stage, the continued ones too (a run key, adopted over the saved one)
        config = yaml.safe_load((tmp_path / f"hydra-{stage}" / "config.yaml").read_text())
        assert config["umm"]["lambda_flow"] == lambda_flow != load_config("tiny").umm.lambda_flow

    said = []
    monkeypatch.chdir(tmp_path.parent)  # the same folder named relatively: the same plan
    run_demo(tmp_path.name, MICRO, say=said.append)
    assert not [line for line in said if line.startswith(("[1/4]", "[2/4]"))]  # only evaluation again
    longer = dataclasses.replace(MICRO, umm_steps={**MICRO.umm_steps, "II": 2})  # another plan, same folder
    with pytest.raises(ValueError, match=r"hydra-II holds a run trained with other settings \(train.steps: 1 there, "
                                         r"2 now\)"):
        run_demo(tmp_path, longer, say=said.append)
    with pytest.raises(ValueError, match=r"data was made by another plan \(scenes: 80 there, 96 now\)"):
        run_demo(tmp_path, dataclasses.replace(MICRO, scenes=96), say=said.append)
    with pytest.raises(ValueError, match=r"teacher was made by another plan \(steps: 2 there, 3 now\)"):
        run_demo(tmp_path, dataclasses.replace(MICRO, teacher_steps=3), say=said.append)


def test_the_report_draws_each_loss_of_the_demos_own_stages(micro_demo):
    curves = training_curves(micro_demo[0], MICRO)
    assert {"HYDRA-TOK stage 1: loss_distill", "HYDRA-TOK stage 2: loss", "HYDRA stages I-II-III: loss_flow",
            "HYDRA stages I-II-III: loss_ntp"} <= set(curves)
    assert all(tag.startswith(("HYDRA-TOK stage", "HYDRA stages")) for tag in curves)  # no other run's curves
    flow = curves["HYDRA stages I-II-III: loss_flow"]
    assert {"train", "val"} <= set(flow)
    assert sorted(step for step, _ in flow["train"]) == [1, 2, 3, 4]  # stages I (2 steps), II and III counted on


def test_the_ablation_trains_each_task_alone_and_reports_it_beside_the_joint_run(micro_demo):
    tmp_path, said = micro_demo[0], []  # the joint run is reused
    results = run_demo(tmp_path, MICRO, say=said.append, ablation=True)
    trained = [line for line in said if line.startswith("[2/4]") and "ablation" in line]
    assert len(trained) == 6  # HYDRA I-III for each variant
    table = results["ablation"]
    assert json.loads((tmp_path / "eval" / "ablation.json").read_text()) == table
    assert table["generation overall: joint"] == results["generation"]["overall"]
    assert table["VQA overall: joint"] == results["understanding"]["overall"]
    assert {"generation overall: generation only", "VQA overall: understanding only"} <= set(table)
    for variant in ("generation-only", "understanding-only"):
        for stage in ("I", "II", "III"):
            assert (tmp_path / "ablation" / variant / f"hydra-{stage}" / "model" / "model.safetensors").is_file()
    config = yaml.safe_load((tmp_path / "ablation" / "generation-only" / "hydra-II" / "config.yaml").read_text())
    assert config["train"]["ratios"] == [0.0, 0.0, 1.0]  # text-to-image data only
    assert "ablation" in (tmp_path / "report" / "index.html").read_text()

    path = tmp_path / "eval" / "ablation.json"
    run_demo(tmp_path, MICRO, say=said.append)  # the same joint model: its ablation table stays
    assert path.is_file()
    path.write_text(json.dumps({**table, "VQA overall: joint": -1.0}))  # as after the joint model is retrained
    said.clear()
    run_demo(tmp_path, MICRO, say=said.append)
    assert not path.is_file() and any("trained again" in line for line in said)
    assert "ablation" not in (tmp_path / "report" / "index.html").read_text().lower()
