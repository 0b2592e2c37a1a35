"""The training recipes end to end on the shapes world: tokenizer stages 1 and 2, then HYDRA stages
I and II, each a bounded number of CPU steps through the real CLI, with the losses falling."""

import copy

import pytest
import torch

from hydra_umm.cli import main
from hydra_umm.config import load_config
from hydra_umm.data.manifest import write_manifest
from hydra_umm.eval.report import read_scalars
from hydra_umm.inference import HydraPipeline
from hydra_umm.models.hydra import HydraModel
from hydra_umm.models.hydra_tok import HydraTok
from hydra_umm.train.recipes import _stream, open_sources

# A HYDRA even smaller than `tiny`: 32 px images, a 4x4 latent grid, 2-layer LM.
SMALL = [
    "tokenizer.image_size=32", "tokenizer.width=64", "tokenizer.depth=4", "tokenizer.gen_depth=2",
    "tokenizer.num_heads=2", "tokenizer.distill_layers=[1,3]", "tokenizer.latent_dim=16",
    "tokenizer.decoder_width=192", "tokenizer.decoder_depth=2", "tokenizer.decoder_heads=2",
    "tokenizer.decode_steps=2", "tokenizer.disc_width=8",
    "llm.hidden_size=64", "llm.num_layers=2", "llm.num_heads=2", "llm.num_kv_heads=1",
    "llm.intermediate_size=128", "llm.vocab_size=512", "umm.head_width=64", "umm.head_depth=1", "umm.head_heads=2",
    "umm.flow.steps=2",
    "train.batch_size=8", "train.warmup=2", "train.log_every=1", "train.val_every=0", "train.num_workers=0",
    "train.lr.default=1e-3",
]


def first_last(curves, name, k=4):
    """Mean of the first and of the last k logged values of train/<name> (steps whose batch held no
    sample of the loss's kind log 0 and are left out)."""
    values = [v for _, v in curves[f"tensorboard/train/{name}"] if v > 0]
    return sum(values[:k]) / k, sum(values[-k:]) / k


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    tok1, tok2, umm1, umm2 = (root / name for name in ("tok1", "tok2", "umm1", "umm2"))
    common = ["--config", "tiny", "data=shapes:96", *SMALL]
    main(["train", "tokenizer", *common, "stage=1", "train.steps=40", f"train.out_dir={tok1}"])
    main(["train", "tokenizer", *common, "stage=2", "train.steps=6", f"init={tok1}/model", f"train.out_dir={tok2}",
          "train.ckpt_every=3", "train.keep_last=1", "train.latent_stats_images=64", "tokenizer.lambda_gan=0.5"])
    main(["train", "umm", *common, "stage=I", "train.steps=40", f"umm.tokenizer_path={tok2}/model",
          f"train.out_dir={umm1}"])
    main(["train", "umm", *common, "stage=II", "train.steps=30", f"init={umm1}/model", f"train.out_dir={umm2}",
          "train.activation_checkpointing=true", "umm.lambda_flow=2", "umm.cfg_scale=2.5"])
    return {"tok1": tok1, "tok2": tok2, "umm1": umm1, "umm2": umm2}


def test_tokenizer_stage1_losses_fall(runs):
    curves = read_scalars(runs["tok1"])
    for name in ("loss", "loss_flow", "loss_distill", "loss_cons"):
        start, end = first_last(curves, name)
        assert end < 0.9 * start, f"{name}: {start:.4f} -> {end:.4f}"
    assert {"tensorboard/train/loss_lpips", "tensorboard/train/loss_kl"} <= set(curves)


def test_tokenizer_stage2_trains_decoder_and_discriminator_only(runs):
    before = HydraTok.from_pretrained(runs["tok1"] / "model").state_dict()
    after = HydraTok.from_pretrained(runs["tok2"] / "model").state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"decoder", "discriminator", "latent_mean", "latent_std"}
    assert {"tensorboard/train/loss_gan", "tensorboard/train/loss_disc"} <= set(read_scalars(runs["tok2"]))
    assert len(list((runs["tok2"] / "checkpoints").glob("*.pt"))) == 1  # keep_last=1


def test_tokenizer_stage2_records_the_latent_statistics_of_the_training_images(runs):
    tok = HydraTok.from_pretrained(runs["tok2"] / "model")
    t2i = open_sources("shapes:96", ["t2i"], 32, seed=0)["t2i"]
    with torch.no_grad():
        z = tok.standardise(tok.encode(torch.stack([t2i[i]["image"] for i in range(64)]))).flatten(0, 1)
    raw = tok.unstandardise(z)
    assert (raw.mean(0) - z.mean(0)).abs().max() > 0.05 or (raw.std(0) / z.std(0) - 1).abs().max() > 0.05
    assert z.mean(0).abs().max() < 0.25 and ((z.std(0) - 1).abs() < 0.25).all()


def test_a_continued_stage_keeps_its_own_loss_weights(runs):
    # init= gives the weights and sizes; the stage's own loss and sampling keys still hold
    assert HydraTok.from_pretrained(runs["tok1"] / "model").cfg.lambda_gan == 0.1
    assert HydraTok.from_pretrained(runs["tok2"] / "model").cfg.lambda_gan == 0.5
    umm = HydraModel.from_pretrained(runs["umm2"] / "model").cfg.umm
    assert (umm.lambda_flow, umm.cfg_scale) == (2.0, 2.5)
    curves = read_scalars(runs["umm2"])
    logged = zip(*(curves[f"tensorboard/train/{k}"] for k in ("loss", "loss_ntp", "loss_flow")))
    for (_, loss), (_, ntp), (_, flow) in logged:
        assert loss == pytest.approx(ntp + 2 * flow, rel=1e-3)


def held_out_flow_loss(model: HydraModel, zero_head: bool = False) -> float:
    """Mean loss_flow on fixed validation text-to-image samples, t uniform, over fixed draws; with
    ``zero_head`` the vision head predicts 0 (as it does before training)."""
    model = copy.deepcopy(model).eval()
    model.cfg.umm.flow.t_sampling = "uniform"
    if zero_head:
        model.vision_head.final.proj.weight.data.zero_()
        model.vision_head.final.proj.bias.data.zero_()
    t2i = open_sources("shapes:96", ["t2i"], 32, seed=0, split="val")["t2i"]
    batch = model.collate([t2i[i] for i in range(len(t2i))], caption_dropout=0.0)
    with torch.no_grad():
        return sum(model(batch, generator=torch.Generator().manual_seed(s))["loss_flow"].item() for s in range(8)) / 8


def test_umm_losses_fall_and_the_model_serves(runs):
    # stage I (LLM frozen): the flow head beats predicting 0 on held-out images. The latents are
    # standardised, so predicting 0 costs E|z - x0|^2 = 2 per channel, whatever the data.
    model = HydraModel.from_pretrained(runs["umm1"] / "model")
    trained, untrained = held_out_flow_loss(model), held_out_flow_loss(model, zero_head=True)
    assert trained < 0.95 * untrained, f"stage I held-out loss_flow {trained:.3f} vs {untrained:.3f} predicting 0"
    start, end = first_last(read_scalars(runs["umm2"]), "loss_ntp")  # stage II: the LLM learns
    assert end < 0.9 * start, f"stage II loss_ntp: {start:.4f} -> {end:.4f}"
    pipe = HydraPipeline.from_pretrained(runs["umm2"] / "model")
    (image,) = pipe.generate(["a red circle"], steps=2, seed=0)
    assert image.size == (32, 32)


def test_umm_stage1_leaves_llm_frozen_and_stage2_trains_it(runs):
    from safetensors.torch import load_file

    tok = load_file(runs["tok2"] / "model" / "model.safetensors")
    s1 = load_file(runs["umm1"] / "model" / "model.safetensors")
    s2 = load_file(runs["umm2"] / "model" / "model.safetensors")
    gen_vit_key = "tokenizer.vit.blocks.0.attn.qkv.weight"
    assert torch.equal(s1[gen_vit_key], tok[gen_vit_key[len("tokenizer."):]])
    assert torch.equal(s2[gen_vit_key], s1[gen_vit_key])
    llm_key = next(k for k in s1 if k.startswith("llm.model.layers.0.mlp"))
    sem_key = "tokenizer.vit.blocks.3.mlp.fc1.weight"
    assert not torch.equal(s1[sem_key], tok[sem_key[len("tokenizer."):]])
    assert not torch.equal(s2[llm_key], s1[llm_key])


def test_a_run_that_stops_on_its_own_is_one_error_line(monkeypatch, capsys):
    from hydra_umm.train import recipes
    from hydra_umm.train.errors import NonFiniteLossError

    def diverging(cfg):
        raise NonFiniteLossError("stopping at step 5: 3 non-finite losses in a row")

    monkeypatch.setitem(recipes.RECIPES, "tokenizer", diverging)
    with pytest.raises(SystemExit):
        main(["train", "tokenizer", "data=shapes"])
    assert capsys.readouterr().err.strip() == "hydra-umm: error: stopping at step 5: 3 non-finite losses in a row"


def test_bad_stage_and_missing_data_are_clear(tmp_path):
    from hydra_umm.train.recipes import train_tokenizer, train_umm

    with pytest.raises(ValueError, match="stages 1, 2"):
        train_tokenizer(load_config("tiny", ["stage=3", "data=shapes"]))
    with pytest.raises(ValueError, match="init=<stage-1"):
        train_tokenizer(load_config("tiny", ["stage=2", "data=shapes"]))
    with pytest.raises(ValueError, match="umm.tokenizer_path"):
        train_umm(load_config("tiny", ["stage=I", "data=shapes"]))
    with pytest.raises(ValueError, match="no training data"):
        open_sources("", ["t2i"], 32, 0)
    with pytest.raises(ValueError, match="not a .jsonl manifest"):
        open_sources("nowhere.csv", ["t2i"], 32, 0)
    with pytest.raises(ValueError, match=r"'shapes:abc': expected shapes:N with N a whole number"):
        open_sources("shapes:abc", ["t2i"], 32, 0)
    val_only = tmp_path / "val.jsonl"
    write_manifest([{"image": "a.png", "caption": "a red square", "split": "val"}], val_only)
    with pytest.raises(ValueError, match="gives no training records for the tasks t2i"):
        open_sources(str(val_only), ["t2i"], 32, 0)
    with pytest.raises(ValueError, match="shards give image-caption pairs only.*caption, t2i"):
        _stream(load_config("tiny", ["data=shards/shard-{000000..000009}.tar"]), {"caption": 1, "t2i": 2}, 32, None)
