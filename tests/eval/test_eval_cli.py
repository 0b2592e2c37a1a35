"""`hydra-umm eval recon|cknna|report` end to end on a tiny random HydraModel and shapes data."""

import json

import pytest
import torch

from hydra_umm import cli
from hydra_umm.config import load_config
from hydra_umm.data.manifest import read_manifest, write_manifest
from hydra_umm.data.shapes import make_dataset
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.text_tokenizer import train_text_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    summary = make_dataset(root / "data", n=60, size=32, seed=0, prompts_per_tag=1)
    torch.manual_seed(0)
    cfg = load_config("tiny", ["tokenizer.image_size=32", "tokenizer.decode_steps=2", "umm.flow.steps=2"])
    model = HydraModel(cfg, train_text_tokenizer(["a red circle", "how many squares?", "2", "blue"] * 8, 300))
    model.save_pretrained(root / "run" / "model")
    model.tokenizer.save_pretrained(root / "tok")
    return root, summary


def test_eval_recon_on_a_model_and_on_a_tokenizer(setup, capsys):
    root, summary = setup
    for model_dir in (root / "run" / "model", root / "tok"):
        out = root / f"recon-{model_dir.name}.json"
        cli.main(["eval", "recon", "--model", str(model_dir), "--images", summary["manifests"]["test"],
                  "--limit", "3", "--out", str(out)])
        result = json.loads(out.read_text())
        assert result["n"] == 3 and 0 < result["psnr"] < 60 and -1 <= result["ssim"] <= 1
    assert "rFID skipped" in capsys.readouterr().out


def test_eval_cknna_scores_every_pair_and_plots(setup, capsys):
    root, summary = setup
    out, plot = root / "cknna.json", root / "features.png"
    cli.main(["eval", "cknna", "--model", str(root / "run" / "model"), "--images", summary["manifests"]["train"],
              "--k", "3", "--limit", "24", "--out", str(out), "--plot", str(plot)])
    result = json.loads(out.read_text())
    assert set(result) == {"student/1 vs teacher/1", "student/5 vs teacher/5", "generation vs understanding"}
    assert result["student/1 vs teacher/1"] == pytest.approx(1.0, abs=1e-6)  # Gen-ViT still is the teacher
    assert all(-1.5 < v < 1.5 for v in result.values())
    assert plot.stat().st_size > 0
    with pytest.raises(SystemExit):
        cli.main(["eval", "cknna", "--model", str(root / "tok"), "--images", summary["manifests"]["train"],
                  "--k", "30", "--limit", "10"])
    records = read_manifest(summary["manifests"]["train"])[:8]  # a class map needs every record's image
    broken = root / "broken.jsonl"
    write_manifest([{**records[0], "image": str(root / "nowhere.png")}, *records[1:]], broken)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["eval", "cknna", "--model", str(root / "tok"), "--images", str(broken), "--k", "3",
                  "--plot", str(plot)])
    assert "whose images all read (1 did not)" in capsys.readouterr().err


def test_eval_report_writes_a_page(setup):
    root, summary = setup
    cli.main(["eval", "report", "--run", str(root / "run"), "--model", str(root / "run" / "model"),
              "--images", summary["manifests"]["test"], "--metadata", summary["metadata"],
              "--manifest", summary["manifests"]["test"], "--limit", "2"])
    page = (root / "run" / "report" / "index.html").read_text()
    assert "Reconstruction" in page and "<img" in page
    with pytest.raises(SystemExit, match="need --model"):  # inputs without a model to run on them
        cli.main(["eval", "report", "--run", str(root / "run"), "--images", summary["manifests"]["test"]])
