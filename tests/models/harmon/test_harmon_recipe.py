"""`hydra-umm train harmon`: the autoencoder stage, then the unified model on it, through the real
CLI and the shared Trainer (checkpoints, resume, samples), and the saved model serves a pipeline."""

import pytest
import torch

from hydra_umm.cli import main
from hydra_umm.config import load_config
from hydra_umm.inference.harmon_pipeline import HarmonPipeline
from hydra_umm.train.checkpoint import latest, load_checkpoint

SMALL = [
    "harmon.image_size=32", "harmon.encoder_width=64", "harmon.encoder_depth=1", "harmon.encoder_heads=2",
    "harmon.decoder_width=64", "harmon.decoder_depth=1", "harmon.decoder_heads=2", "harmon.head_width=64",
    "harmon.head_depth=1", "harmon.mar_steps=2", "harmon.sampling_steps=5",
    "llm.hidden_size=64", "llm.num_layers=2", "llm.num_heads=2", "llm.num_kv_heads=1", "llm.intermediate_size=128",
    "llm.vocab_size=512", "train.batch_size=4", "train.warmup=1", "train.log_every=1", "train.num_workers=0",
    "train.lr.default=1e-3",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmon")
    common = ["train", "harmon", "--config", "harmon-tiny", "data=shapes:24", *SMALL]
    main(["train", "harmon", "--config", "tiny", "data=shapes:24", *SMALL, "stage=vae", "train.steps=3",
          "train.val_every=3", f"train.out_dir={root / 'vae'}"])  # tiny holds the tiny Harmon too
    main([*common, "train.steps=4", "train.val_every=4", f"harmon.vae_path={root / 'vae' / 'model'}",
          f"train.out_dir={root / 'unified'}"])
    return root


def test_the_autoencoder_stage_saves_a_loadable_autoencoder(runs):
    assert (runs / "vae" / "model" / "vae.safetensors").is_file()
    assert list((runs / "vae" / "samples").glob("recon_*.png"))


def test_the_unified_stage_trains_checkpoints_and_serves(runs):
    run = runs / "unified"
    assert list((run / "samples").glob("t2i_*.png"))
    state = load_checkpoint(latest(run))
    assert state["step"] == 4
    decay = {g["name"]: g["weight_decay"] for g in state["optimizer"]["param_groups"]}
    assert decay["vision_head"] == 0.0 and decay["encoder"] == decay["llm"] > 0 and decay["llm.no_decay"] == 0.0
    pipe = HarmonPipeline.from_pretrained(run / "model")
    assert pipe.generate(["a red circle"], seed=0)[0].size == (32, 32)
    assert isinstance(pipe.answer([torch.zeros(3, 32, 32)], ["what is it?"], max_new_tokens=2)[0], str)


def test_a_run_resumes_under_its_own_schedule_only(runs, capsys):
    run = runs / "unified"
    again = ["train", "harmon", "--config", "harmon-tiny", "data=shapes:24", *SMALL, "train.val_every=0",
             f"harmon.vae_path={runs / 'vae' / 'model'}", f"train.out_dir={run}"]
    main([*again, "train.steps=4"])
    assert "resumed from" in (run / "train.log").read_text() and load_checkpoint(latest(run))["step"] == 4
    with pytest.raises(SystemExit):  # more steps are another cosine: refused, not run on at the old one's lr 0
        main([*again, "train.steps=5"])
    assert "another learning-rate schedule" in capsys.readouterr().err


def test_a_continued_model_trains_at_its_own_image_size(runs, tmp_path):
    """init= keeps the saved model's sizes: the 32-px model continues on 32-px data under a config whose
    harmon.image_size (harmon-tiny's 64) is another."""
    out = tmp_path / "continued"
    main(["train", "harmon", "--config", "harmon-tiny", "data=shapes:24", *[o for o in SMALL if "image_size" not in o],
          "train.steps=1", "train.val_every=0", f"init={runs / 'unified' / 'model'}", f"train.out_dir={out}"])
    assert load_checkpoint(latest(out))["step"] == 1


def test_stages_and_the_autoencoder_are_required(capsys):
    for overrides, message in ((["stage=I"], "Harmon training has stages vae, unified"), ([], "harmon.vae_path")):
        with pytest.raises(SystemExit):
            main(["train", "harmon", "--config", "harmon-tiny", "data=shapes:8", *SMALL, *overrides])
        assert message in capsys.readouterr().err
    assert load_config("tiny").harmon == load_config("harmon-tiny").harmon
    finetune = load_config("harmon-finetune")
    assert (finetune.train.lr.default, finetune.train.betas, finetune.train.weight_decay) == (1e-5, [0.9, 0.95], 0.02)
    assert finetune.train.ratios == [0.0, 1.0, 4.0] and finetune.harmon.und_grad_scale == 0.1
    assert finetune.train.task_per_batch


def test_task_per_batch_trains_on_batches_of_one_task():
    from hydra_umm.data.datasets import IMAGE_TASKS
    from hydra_umm.train.distributed import DistEnv
    from hydra_umm.train.recipes import _stream

    cfg = load_config("harmon-finetune", ["data=shapes:24", *SMALL])  # task_per_batch, 1 caption : 4 t2i
    data, _ = _stream(cfg, dict(zip(IMAGE_TASKS, cfg.train.ratios)), cfg.harmon.image_size, DistEnv())
    kinds = [set(next(data)["kind"]) for _ in range(10)]
    assert all(len(k) == 1 for k in kinds) and {"und"} in kinds and {"gen"} in kinds
