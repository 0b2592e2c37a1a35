"""HYDRA-X's training mixture: stage ratios in the paper's Tab. 8 order, the shapes clip and edit
sources, and `train umm` over a saved HYDRA-XTok end to end (every task drawn, the model saved as
HYDRA-X)."""

import json
import math

import pytest
import torch

from hydra_umm.cli import main
from hydra_umm.config import load_config
from hydra_umm.data.datasets import collate_items
from hydra_umm.data.manifest import read_manifest, write_manifest
from hydra_umm.data.mixture import TaskMixture
from hydra_umm.data.shapes import make_clip_dataset
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.hydra_xtok import HydraXTok
from hydra_umm.train.recipes import X_RATIO_TASKS, open_sources, stage_ratios

SMALL = ["tokenizer.image_size=32", "llm.vocab_size=512", "train.clip_frames=5", "train.batch_size=6",
         "train.warmup=1", "train.log_every=1", "train.val_every=0", "train.num_workers=0", "umm.flow.steps=2"]
DATA = "data=shapes:40,shapes-clips:8,shapes-edits:14"


def test_stage_ratios_follow_the_paper_order():
    x = load_config("hydra-x-tiny", ["stage=II"])
    assert stage_ratios(x) == dict(zip(X_RATIO_TASKS, [0, 2, 6, 1, 1, 0, 0, 0]))  # Tab. 8 stage 2, as it stands
    assert load_config("hydra-x-tiny", ["stage=III"]).train.ratios is None
    assert stage_ratios(load_config("hydra-x-tiny", ["stage=III"]))["video_t2i"] == 1  # ours
    x.train.ratios = [0, 1, 1, 0, 0, 0, 3]  # seven numbers: no video generation
    assert stage_ratios(x)["edit"] == 3 and stage_ratios(x)["video_t2i"] == 0
    x.train.ratios = [1, 2, 3]
    with pytest.raises(ValueError, match="7 or 8 numbers"):
        stage_ratios(x)
    image = load_config("tiny", ["stage=I"])
    assert stage_ratios(image) == {"instruction": 0, "caption": 1, "t2i": 3}
    image.train.ratios = [0, 2, 6, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="umm.xtok=true"):
        stage_ratios(image)


def test_shapes_clip_and_edit_sources_give_every_hydra_x_task():
    sources = open_sources("shapes:20,shapes-clips:4,shapes-edits:7", list(X_RATIO_TASKS), 32, seed=0, frames=5)
    assert set(sources) == set(X_RATIO_TASKS)
    kinds = {task: sources[task][0]["kind"] for task in sources}
    assert kinds == {"text": "text", "caption": "und", "t2i": "gen", "video_caption": "und",
                     "video_instruction": "und", "instruction": "und", "edit": "edit", "video_t2i": "gen"}
    assert sources["video_t2i"][0]["image"].shape == (3, 5, 32, 32)
    edit = sources["edit"][0]
    assert edit["source"].shape == edit["image"].shape == (3, 32, 32) and edit["prompt"].startswith("add")
    batch = collate_items([sources[t][0] for t in ("t2i", "video_caption", "edit", "text")])
    assert isinstance(batch["image"], list) and batch["image"][3] is None  # images and clips: a list
    assert batch["source"][2] is not None and batch["source"][0] is None
    val = open_sources("shapes-edits:7", ["edit"], 32, seed=0, split="val")["edit"]
    assert val[0]["prompt"] != edit["prompt"]  # each split draws its own edits


def test_a_clip_manifest_gives_clip_tasks_and_anchor_frames_only_to_tokenizers(tmp_path):
    manifest = make_clip_dataset(tmp_path, n=4, frames=5, size=32, seed=0)["manifests"]["train"]
    umm = open_sources(manifest, ["caption", "t2i", "instruction", "video_caption", "video_instruction"], 32, 0, frames=5)
    assert set(umm) == {"video_caption", "video_instruction"}  # its captions and questions are about its clips
    assert umm["video_caption"][0]["image"].shape == (3, 5, 32, 32)
    tok = open_sources(manifest, ["t2i"], 32, 0, frames=5, anchor_frames=True)["t2i"]
    assert len(tok) == len(umm["video_caption"]) and tok[0]["image"].shape == (3, 32, 32)
    unsplit = tmp_path / "unsplit.jsonl"  # a manifest naming no splits is all training data
    write_manifest([{k: v for k, v in r.items() if k != "split"} for r in read_manifest(manifest)], unsplit)
    assert len(open_sources(str(unsplit), ["video_caption"], 32, 0, frames=5)["video_caption"]) == len(tok)
    captions_only = tmp_path / "captions.jsonl"  # clips with captions but no questions give no clip questions
    write_manifest([{k: v for k, v in r.items() if k != "qa"} for r in read_manifest(unsplit)], captions_only)
    assert set(open_sources(str(captions_only), ["video_caption", "video_instruction"], 32, 0, frames=5)) == \
        {"video_caption"}


def test_train_umm_over_hydra_xtok_draws_every_task(tmp_path):
    cfg = load_config("hydra-x-tiny", ["tokenizer.image_size=32"])
    torch.manual_seed(0)
    HydraXTok(cfg.tokenizer, cfg.xtok).save_pretrained(tmp_path / "xtok")
    out = tmp_path / "run"
    main(["train", "umm", "--config", "tiny", *SMALL, DATA, "stage=III", "train.steps=4",
          f"umm.tokenizer_path={tmp_path / 'xtok'}", f"train.out_dir={out}"])
    drawn = {TaskMixture(stage_ratios(load_config("hydra-x-tiny", ["stage=III"])), seed=0).task(i) for i in range(24)}
    assert drawn == set(X_RATIO_TASKS)  # 4 steps of 6: every task, in mixed image, clip and edit batches
    model = HydraModel.from_pretrained(out / "model")
    assert isinstance(model.tokenizer, HydraXTok) and model.cfg.umm.xtok  # the tokenizer made it HYDRA-X
    edit_words = model.text_tokenizer("make the", add_special_tokens=False).input_ids
    assert model.text_tokenizer.unk_token_id not in edit_words  # the corpus held the edit instructions


def test_ablate_edit_trains_and_scores_both_layouts(tmp_path, capsys):
    main(["ablate", "edit", "--steps", "2", "--tok-steps", "2", "--out", str(tmp_path), "--edits", "14",
          "--eval", "7", "--clips", "8", "--frames", "5", "--images", "16", "tokenizer.image_size=32",
          "llm.vocab_size=512", "train.batch_size=4"])
    assert f"ablation report written to {tmp_path / 'report' / 'index.html'}" in capsys.readouterr().out
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert set(result["metrics"]) == {"edit score", "instruction followed", "rest kept", "Recon-PSNR (dB)"}
    for table in result["metrics"].values():
        assert list(table) == ["STI", "Indep"] and all(math.isfinite(v) and v >= 0 for v in table.values())
    sti, indep = (HydraModel.from_pretrained(tmp_path / "runs" / layout / "model") for layout in ("sti", "indep"))
    assert (sti.cfg.umm.edit_layout, indep.cfg.umm.edit_layout) == ("sti", "indep")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "move" in page and page.count("<td>STI</td>") == 4
    # the same folder with another budget: its runs are not passed off as that budget's
    for changed, where in ((["--tok-steps", "3"], "xtok/stage-1"), (["--steps", "3"], "runs/sti")):
        args = {"--steps": "2", "--tok-steps": "2", **dict(zip(changed[::2], changed[1::2]))}
        with pytest.raises(SystemExit):
            main(["ablate", "edit", *(x for kv in args.items() for x in kv), "--out", str(tmp_path), "--edits", "14",
                  "--eval", "7", "--clips", "8", "--frames", "5", "--images", "16", "tokenizer.image_size=32",
                  "llm.vocab_size=512", "train.batch_size=4"])
        assert f"{where} holds a run trained with other settings" in capsys.readouterr().err
