"""HYDRA-XTok's training entry (`hydra-umm train xtok`, stages 1-3 on images and clips in turn), the
video teacher it distils against, and `hydra-umm ablate xtok`, on a micro xtok-tiny at 32 px."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hydra_umm.cli import main
from hydra_umm.config import load_config
from hydra_umm.data.mixture import BatchStream
from hydra_umm.data.shapes import make_clip_dataset
from hydra_umm.data.video import load_clips
from hydra_umm.eval.report import read_scalars
from hydra_umm.models.hydra_xtok import HydraXTok
from hydra_umm.train.ablate import VARIANTS, variant_name
from hydra_umm.train.recipes import AlternatingStream, _clip_dataset, train_xtok
from hydra_umm.train.teacher import VIDEO_METRICS_FILE, VIDEO_WEIGHTS_FILE, train_video_teacher

MICRO = ["tokenizer.image_size=32", "tokenizer.width=32", "tokenizer.depth=4", "tokenizer.gen_depth=2",
         "tokenizer.num_heads=2", "tokenizer.distill_layers=[1,3]", "tokenizer.latent_dim=8",
         "tokenizer.decoder_width=32", "tokenizer.decoder_depth=1", "tokenizer.decoder_heads=2",
         "tokenizer.disc_width=8", "tokenizer.lambda_lpips=0"]
TRAIN = ["train.batch_size=4", "train.warmup=1", "train.log_every=1", "train.val_every=0", "train.num_workers=0",
         "train.lr.default=2e-3", "train.latent_stats_images=8"]
FRAMES = 5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A clip data set of 12 five-frame clips at 32 px: its manifests."""
    return make_clip_dataset(tmp_path_factory.mktemp("clips"), n=12, frames=FRAMES, size=32, seed=0)["manifests"]


@pytest.fixture(scope="module")
def video_teacher(tmp_path_factory):
    cfg = load_config("xtok-tiny", MICRO)
    out = tmp_path_factory.mktemp("video_teacher")
    metrics = train_video_teacher(cfg, out, steps=30, n_clips=40, frames=FRAMES, batch_size=8, lr=3e-3, progress=False)
    return out, metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory, clips, video_teacher):
    root = tmp_path_factory.mktemp("xtok")
    common = ["--config", "xtok-tiny", f"data=shapes:24,{clips['train']}", *MICRO, *TRAIN,
              f"xtok.video_teacher_weights={video_teacher[0] / VIDEO_WEIGHTS_FILE}"]
    # stage 1 also validates (images of shapes' val split, clips of val.jsonl) and writes samples
    main(["train", "xtok", *common, "stage=1", "train.steps=12", f"train.out_dir={root / 's1'}", "train.val_every=12",
          f"data=shapes:24,{clips['train']},{clips['val']}"])
    main(["train", "xtok", *common, "stage=2", "train.steps=3", f"init={root / 's1' / 'model'}",
          f"train.out_dir={root / 's2'}"])
    main(["train", "xtok", *common, "stage=3", "train.steps=3", f"init={root / 's2' / 'model'}",
          f"train.out_dir={root / 's3'}"])
    return {stage: root / stage for stage in ("s1", "s2", "s3")}


def test_train_xtok_defaults_to_the_xtok_preset(clips, video_teacher, tmp_path):
    main(["train", "xtok", f"data=shapes:24,{clips['train']}", *MICRO, *TRAIN, "stage=1", "train.steps=1",
          f"xtok.video_teacher_weights={video_teacher[0] / VIDEO_WEIGHTS_FILE}", f"train.out_dir={tmp_path}"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["name"] == "xtok-tiny"  # tiny would fail to build


def initial(video_teacher) -> HydraXTok:
    """The model stage 1 starts from (train_xtok seeds torch with cfg.seed = 0 before building it)."""
    cfg = load_config("xtok-tiny", [*MICRO, f"xtok.video_teacher_weights={video_teacher[0] / VIDEO_WEIGHTS_FILE}"])
    torch.manual_seed(0)
    return HydraXTok(cfg.tokenizer, cfg.xtok)


def changed(before: HydraXTok, after: HydraXTok) -> set[str]:
    a, b = before.state_dict(), after.state_dict()
    return {k for k in a if not torch.equal(a[k], b[k])}


def model(run) -> HydraXTok:
    return HydraXTok.from_pretrained(run / "model")


def test_stage1_trains_encoder_and_decoder_on_images_and_clips_in_turn(runs, video_teacher):
    keys = changed(initial(video_teacher), model(runs["s1"]))
    for part in ("vit.patch_embed", "vit.blocks.0", "vit.blocks.3", "bottleneck.compress", "bottleneck.reconstruct",
                 "temporal_embed", "temporal_merge", "decompressor", "latent_decompressor", "decoder"):
        assert any(k.startswith(part + ".") for k in keys), part
    assert not any(k.startswith(("teacher.", "video_teacher.", "discriminator.")) for k in keys)
    # the video term is 0 on image batches (first, third, ...) and positive on clip batches
    video = [v for _, v in read_scalars(runs["s1"])["tensorboard/train/loss_distill_video"]]
    assert video[0::2] == [0.0] * 6 and all(v > 0 for v in video[1::2])
    l1 = [v for _, v in read_scalars(runs["s1"])["tensorboard/train/loss_l1"]]
    assert sum(l1[-4:]) < 0.9 * sum(l1[:4]), l1
    assert read_scalars(runs["s1"])["tensorboard/val/loss_distill_video"][0][1] > 0  # a clip batch among them
    samples = {p.name for p in (runs["s1"] / "samples").glob("*.png")}
    assert samples == {"image_0000012.png", "clip_0000012.png"}


def test_stage2_trains_only_decoder_side_and_discriminator(runs):
    keys = changed(model(runs["s1"]), model(runs["s2"]))
    assert {k.split(".")[0] for k in keys} == {"decoder", "latent_decompressor", "discriminator"}
    assert {"tensorboard/train/loss_gan", "tensorboard/train/loss_disc"} <= set(read_scalars(runs["s2"]))


def test_stage3_records_latent_stats_and_trains_only_sem_vit(runs, clips):
    before, after = model(runs["s2"]), model(runs["s3"])
    k = after.cfg.gen_depth
    sem = ("bottleneck.reconstruct.", *(f"vit.blocks.{i}." for i in range(k, after.cfg.depth)), "vit.norm.",
           "decompressor.")
    keys = changed(before, after)
    assert {"latent_mean", "latent_std"} <= keys
    assert keys - {"latent_mean", "latent_std"} and all(key.startswith(sem) for key in keys - {"latent_mean",
                                                                                               "latent_std"})
    assert any(key.startswith(f"vit.blocks.{k}.") for key in keys) and any(key.startswith("decompressor.")
                                                                           for key in keys)
    # the recorded statistics standardise the training clips' latents (loosely: 8 images and 8 clips)
    with torch.no_grad():
        z = after.standardise(after.encode(load_clips(clips["train"], FRAMES))).reshape(-1, after.cfg.latent_dim)
    raw = after.unstandardise(z)
    assert (raw.std(0) / z.std(0) - 1).abs().max() > 0.1  # the statistics are not the identity
    assert z.mean(0).abs().max() < 0.5 and ((z.std(0) - 1).abs() < 0.5).all()


def test_video_teacher_learns_and_loads_into_hydra_xtok(video_teacher):
    out, metrics = video_teacher
    losses = metrics["losses"]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    assert json.loads((out / VIDEO_METRICS_FILE).read_text())["steps"] == 30
    cfg = load_config("xtok-tiny", [*MICRO, f"xtok.video_teacher_weights={out / VIDEO_WEIGHTS_FILE}"])
    saved = load_file(str(out / VIDEO_WEIGHTS_FILE))
    loaded = HydraXTok(cfg.tokenizer, cfg.xtok).video_teacher.vit.state_dict()
    fresh = HydraXTok(cfg.tokenizer, cfg.xtok, load_weights=False).video_teacher.vit.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not all(torch.equal(saved[k], fresh[k]) for k in saved)


def test_ablate_xtok_writes_every_variant(tmp_path, capsys):
    main(["ablate", "xtok", "--steps", "2", "--out", str(tmp_path), "--clips", "8", "--frames", "5",
          "--images", "8", *MICRO, "train.batch_size=2"])
    assert f"ablation report written to {tmp_path / 'report' / 'index.html'}" in capsys.readouterr().out
    result = json.loads((tmp_path / "ablation.json").read_text())
    names = [variant_name(*v) for v in VARIANTS]
    assert len(result["metrics"]) == 4
    for table in result["metrics"].values():
        assert list(table) == names and all(math.isfinite(v) and v > 0 for v in table.values())
    assert result["metrics"]["latency / full + single"]["full + single"] == 1.0
    page = (tmp_path / "report" / "index.html").read_text()
    assert all(page.count(f"<td>{name}</td>") == 4 for name in ("full + single", "causal + hier", "tubelet + hier",
                                                                 "tubelet + single"))
    assert (tmp_path / "report" / "assets" / "reconstructions.png").is_file()


def test_alternating_stream_resumes_where_it_stopped():
    def counter(start: int) -> BatchStream:
        return BatchStream(lambda position: iter(range(start + position, start + 1000)))

    stream = AlternatingStream(counter(0), None, counter(500), None)
    assert [next(stream) for _ in range(5)] == [0, 500, 1, 501, 2]
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = AlternatingStream(counter(0), None, counter(500), None)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(3)] == expected == [502, 3, 503]


def test_clips_are_cut_to_train_clip_frames_or_the_shortest_clip(clips, caplog):
    assert _clip_dataset([clips["train"]], 32, "train", frames=1)[0]["image"].shape == (3, 1, 32, 32)
    assert not caplog.records
    assert _clip_dataset([clips["train"]], 32, "train", frames=17)[0]["image"].shape == (3, FRAMES, 32, 32)
    assert f"fewer than train.clip_frames = 17: the tokenizer trains on clips of {FRAMES} frames" in caplog.text

def test_bad_stage_init_and_data_are_clear(clips):
    with pytest.raises(ValueError, match="stages 1, 2, 3"):
        train_xtok(load_config("xtok-tiny", ["stage=4", f"data={clips['train']}"]))
    with pytest.raises(ValueError, match="init=<stage-1"):
        train_xtok(load_config("xtok-tiny", ["stage=2", f"data={clips['train']}"]))
    with pytest.raises(ValueError, match="no clip manifest"):
        train_xtok(load_config("xtok-tiny", ["stage=1", "data=shapes:8"]))
