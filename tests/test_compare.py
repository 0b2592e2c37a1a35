"""`hydra-umm compare`: Harmon trained on the demo's data and budget beside the demo's HYDRA (reused),
both evaluated alike, one side-by-side report; and the report's pieces on their own."""

import json
import math

import pytest
import yaml

from hydra_umm.cli import main
from hydra_umm.compare import (
    CURVES, HARMON_VAE_OVERRIDES, hydra_runs, loss_curves, parse_models, run_compare, run_scalars, training_seconds,
)
from hydra_umm.eval.comparison import ComparedModel, metric_rows
from hydra_umm.train.teacher import METRICS_FILE

from micro_plan import MICRO, planned


@pytest.fixture(scope="module")
def demo_dir(micro_demo):
    return micro_demo[0]


@pytest.fixture(scope="module")
def compared(demo_dir):
    """The comparison on the micro demo."""
    said = []
    return run_compare("hydra,harmon", demo_dir, MICRO, say=said.append), said


def test_compare_trains_harmon_alone_on_hydras_budget(compared, demo_dir):
    _, said = compared
    trained = [line for line in said if line.startswith("[2/4]")]
    assert len(trained) == 4 and all("Harmon" in line for line in trained)  # HYDRA's runs are the demo's
    for stage, steps in MICRO.umm_steps.items():
        hydra = yaml.safe_load((demo_dir / f"hydra-{stage}" / "config.yaml").read_text())
        harmon = yaml.safe_load((demo_dir / f"harmon-{stage}" / "config.yaml").read_text())
        assert harmon["llm"] == hydra["llm"] and harmon["data"] == hydra["data"]  # the same LLM and data
        for key in ("steps", "batch_size", "ratios", "lr"):
            assert harmon["train"][key] == hydra["train"][key]
        assert harmon["train"]["ratios"] == list(MICRO.umm_ratios[stage]) and harmon["train"]["steps"] == steps
    vae = yaml.safe_load((demo_dir / "harmon-vae" / "config.yaml").read_text())
    assert vae["stage"] == "vae" and vae["train"]["steps"] == sum(MICRO.tokenizer_steps.values())
    assert vae["train"]["lr"]["default"] == planned(HARMON_VAE_OVERRIDES)


def test_both_models_are_evaluated_alike_and_reported_side_by_side(compared, demo_dir):
    summary, said = compared
    assert list(summary) == ["HYDRA", "Harmon"]
    for name in ("reconstruction", "generation", "understanding", "alignment"):  # the demo's own tables
        assert summary["HYDRA"]["results"][name] == json.loads((demo_dir / "eval" / f"{name}.json").read_text())
        if name != "alignment":
            assert set(summary["Harmon"]["results"][name]) == set(summary["HYDRA"]["results"][name])
        assert json.loads((demo_dir / "harmon" / "eval" / f"{name}.json").read_text()) == summary["Harmon"]["results"][name]
    assert json.loads((demo_dir / "compare" / "compare.json").read_text()) == summary
    hydra, harmon = summary["HYDRA"], summary["Harmon"]
    assert set(harmon["results"]["alignment"]) == {"generation vs understanding"}  # Harmon has no teacher
    assert hydra["parameters"]["LLM"] == harmon["parameters"]["LLM"] > 0
    assert set(hydra["seconds"]) == {"teacher", "tokenizer", "unified", "total"}
    assert set(harmon["seconds"]) == {"autoencoder", "unified", "total"}
    assert all(v > 0 and math.isfinite(v) for m in (hydra, harmon) for v in m["seconds"].values())
    page = (demo_dir / "compare" / "index.html").read_text()
    for section in ("Metrics", "Training cost", "Reconstruction (input | HYDRA | Harmon)", "Generation",
                    "Understanding", "Training curves"):
        assert f"<h2>{section}" in page
    assert (demo_dir / "compare" / "assets" / "curves.png").is_file()
    assert any(line.startswith("report:") for line in said)


def test_curves_follow_the_stages_and_seconds_the_records(compared, demo_dir):
    runs = hydra_runs(MICRO)
    scalars = run_scalars(demo_dir, runs)
    curves = loss_curves(runs, scalars, CURVES["hydra"])
    steps = [s for s, _ in curves["stages I-III: train/loss_ntp"]]
    assert steps == list(range(1, sum(MICRO.umm_steps.values()) + 1))  # stages I, II, III one after another
    seconds = training_seconds(demo_dir, runs, scalars)
    assert seconds["teacher"] == json.loads((demo_dir / "teacher" / METRICS_FILE).read_text())["seconds"]
    assert seconds["total"] == pytest.approx(seconds["teacher"] + seconds["tokenizer"] + seconds["unified"])
    assert math.isnan(training_seconds(demo_dir, {"unified": ["none"]}, {"none": {}})["unified"])


def model(name: str, **results: float) -> ComparedModel:
    return ComparedModel(name, {"t": results}, [], [], [], [], {}, {}, {})


def test_metric_rows_name_the_better_model_but_not_for_ties_or_baselines():
    rows = metric_rows([model("A", psnr=20.0, acc=0.5, n=8, **{"acc (majority)": 0.4, "chance (x)": 0.1}),
                        model("B", psnr=25.0, acc=0.5, n=8, **{"acc (majority)": 0.6, "chance (x)": 0.2})])
    assert rows == [("t: psnr", [20.0, 25.0], "B"), ("t: acc", [0.5, 0.5], ""),
                    ("t: acc (majority)", [0.4, 0.6], ""), ("t: chance (x)", [0.1, 0.2], "")]
    assert metric_rows([model("A", psnr=1.0)]) == [("t: psnr", [1.0], "")]


def test_models_are_checked(capsys):
    assert parse_models("harmon, hydra") == ["harmon", "hydra"]
    for bad in ("hydra,gpt", "hydra,hydra", ""):
        with pytest.raises(ValueError, match="hydra, harmon"):
            parse_models(bad)
    with pytest.raises(SystemExit):
        main(["compare", "--models", "hydra,gpt"])
    assert "--models takes distinct names from hydra, harmon" in capsys.readouterr().err
