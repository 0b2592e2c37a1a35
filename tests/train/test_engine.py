import fcntl
import itertools
import math
import os
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from hydra_umm.config import ConfigError, apply_overrides, from_dict
from hydra_umm.data.datasets import IMAGE_TASKS, RecordDataset, shapes_records
from hydra_umm.data.mixture import BatchStream, MixtureDataset, TaskMixture, mixture_stream
from hydra_umm.train.checkpoint import checkpoints
from hydra_umm.train.config import LearningRates, TrainConfig
from hydra_umm.train.engine import Trainer
from hydra_umm.train.errors import DataExhaustedError, NonFiniteLossError, TrainingError, TrainingInterrupted
from hydra_umm.train.schedule import WarmupCosine, build_optimizer, param_groups


class MLP(nn.Module):
    """Regresses y = 0.5 * sum(x); dropout makes the run depend on the torch RNG state."""

    def __init__(self, nan_at: frozenset = frozenset()):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.1))
        self.decoder = nn.Linear(32, 1)
        self.nan_at = nan_at  # batch indices whose loss is NaN

    def forward(self, batch):
        error = self.decoder(self.encoder(batch["x"])) - batch["y"]
        loss = error.pow(2).mean()
        if int(batch["index"]) in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "mae": error.abs().mean()}


def random_batch(i: int) -> dict:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(16, 4, generator=g)
    return {"x": x, "y": 0.5 * x.sum(1, keepdim=True), "index": torch.tensor(i)}


def stream() -> BatchStream:
    return BatchStream(lambda position: map(random_batch, itertools.count(position)))


def make_trainer(out_dir, seed=0, nan_at=frozenset(), validate=None, **overrides) -> Trainer:
    settings = dict(out_dir=str(out_dir), steps=20, batch_size=16, warmup=4, log_every=5, val_every=0,
                    ckpt_every=4, keep_last=2, num_workers=0, lr=LearningRates(default=3e-3, decoder=1e-2))
    cfg = TrainConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    model = MLP(nan_at)
    optimizer, scheduler = build_optimizer({"encoder": model.encoder, "decoder": model.decoder}, cfg, model)
    return Trainer(model, optimizer, scheduler, stream(), cfg, validate=validate)


def weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    trainer = make_trainer(out)
    with torch.no_grad():
        first_loss = trainer.model.eval()(random_batch(0))["loss"].item()  # eval: draws no dropout mask
    summary = trainer.fit()
    return out, trainer, summary, first_loss


def test_a_resumed_run_matches_an_uninterrupted_one(uninterrupted, tmp_path):
    _, full, _, _ = uninterrupted
    stopped = make_trainer(tmp_path)
    assert stopped.fit(until=10)["step"] == 10
    torch.manual_seed(999)  # a fresh process: other RNG state, other initial weights
    resumed = make_trainer(tmp_path, seed=1)
    assert resumed.fit()["step"] == 20
    expected, got = weights(full), weights(resumed)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)
    assert resumed.scheduler.get_last_lr() == full.scheduler.get_last_lr()
    assert resumed.data.state_dict() == full.data.state_dict() == {"position": 20}
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000016.pt", "step_00000020.pt"]  # keep_last=2


def test_train_seconds_count_steps_and_carry_over_a_resume(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hydra_umm.train import engine

    clock = itertools.count()  # every perf_counter call one second later: a step takes exactly 1 s
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    make_trainer(tmp_path).fit(until=10)
    resumed = make_trainer(tmp_path)
    resumed.fit()
    assert resumed.train_seconds == 20.0  # 10 s restored from the step-10 checkpoint, 10 s more
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("time/train_seconds")][-2:] == [(15, 15.0), (20, 20.0)]


def test_resume_from_a_named_checkpoint(uninterrupted, tmp_path):
    out, full, _, _ = uninterrupted
    named = make_trainer(tmp_path, seed=2, resume=str(out / "checkpoints" / "step_00000016.pt"))
    assert named.fit()["step"] == 20
    for k, v in weights(full).items():
        torch.testing.assert_close(weights(named)[k], v, rtol=1e-6, atol=1e-7)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        make_trainer(tmp_path / "other", resume=str(tmp_path / "missing.pt")).fit()


def test_resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside(uninterrupted, tmp_path):
    """Going back in a run's own folder: the abandoned later checkpoints neither outrank the continued
    run's (keep_last pruned the new ones, latest pointed at the old) nor are they deleted."""
    make_trainer(tmp_path, ckpt_every=4, keep_last=3).fit()  # steps 12, 16, 20 kept
    back = make_trainer(tmp_path, seed=2, keep_last=1, resume=str(tmp_path / "checkpoints" / "step_00000012.pt"))
    back.fit(until=14)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000014.pt"]
    aside = tmp_path / "checkpoints" / "abandoned_after_00000012"
    assert sorted(p.name for p in aside.iterdir()) == ["step_00000016.pt", "step_00000020.pt"]
    assert make_trainer(tmp_path).fit()["step"] == 20  # resume=auto continues the new line

def test_data_that_runs_out_saves_the_steps_done_and_says_so(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, ckpt_every=4)
    trainer.data = BatchStream(lambda position: map(random_batch, range(position, 6)))  # six batches only
    with pytest.raises(DataExhaustedError, match="ran out after 6 of 10 steps"):
        trainer.fit()
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000006.pt"]
    empty = make_trainer(tmp_path / "empty")
    empty.data = BatchStream(lambda position: iter(()))
    with pytest.raises(DataExhaustedError) as stopped:
        empty.fit()
    assert str(stopped.value).startswith("the training data ran out after 0 of 20 steps:")  # nothing saved, none claimed

def test_resume_never_refuses_to_mix_with_old_checkpoints(uninterrupted):
    out = uninterrupted[0]
    config = (out / "config.yaml").read_text()
    with pytest.raises(FileExistsError, match="resume=auto"):
        make_trainer(out, resume="never", steps=30).fit()
    assert (out / "config.yaml").read_text() == config  # the run's own config is kept


def test_resume_refuses_a_changed_schedule(tmp_path):
    make_trainer(tmp_path).fit(until=8)
    for change in ({"steps": 40}, {"warmup": 2}, {"lr": LearningRates(default=1e-3, decoder=1e-2)},
                   {"lr": LearningRates(default=1e-2, decoder=3e-3)},  # the same rates, other groups
                   {"weight_decay": 0.3}, {"betas": [0.8, 0.9]}):
        with pytest.raises(ValueError, match="another learning-rate schedule or optimiser settings"):
            make_trainer(tmp_path, **change).fit()
    assert make_trainer(tmp_path).fit()["step"] == 20


def test_resume_refuses_other_settings_but_not_another_place_or_pace(tmp_path):
    make_trainer(tmp_path / "a").fit(until=8)
    moved = tmp_path / "b" / "checkpoints"
    moved.mkdir(parents=True)
    (tmp_path / "a" / "checkpoints" / "step_00000008.pt").rename(moved / "step_00000008.pt")  # another folder
    with pytest.raises(ValueError, match=r"other settings \(train.batch_size: 16 there, 8 now\)"):
        make_trainer(tmp_path / "b", batch_size=8).fit()
    assert make_trainer(tmp_path / "b", log_every=2, ckpt_every=5, num_workers=1).fit()["step"] == 20


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    trainer = make_trainer(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    with (tmp_path / ".lock").open("w") as held:  # the first run's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TrainingError, match="another process is training in"):
            trainer.fit()
        assert not checkpoints(tmp_path)
    assert trainer.fit()["step"] == 20  # once it has ended


def test_ctrl_c_stops_after_the_step_under_way_and_saves_it(uninterrupted, tmp_path):
    trainer = make_trainer(tmp_path)
    step = trainer.train_step

    def interrupted_step(batch):  # Ctrl-C arrives during step 7
        if trainer.step == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return step(batch)

    trainer.train_step = interrupted_step
    with pytest.raises(TrainingInterrupted, match="after step 7 of 20.*run the same command to resume"):
        trainer.fit()
    assert checkpoints(tmp_path)[-1].name == "step_00000007.pt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Ctrl-C again
    resumed = make_trainer(tmp_path, seed=1)
    assert resumed.fit()["step"] == 20
    expected, got = weights(uninterrupted[1]), weights(resumed)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)


def test_the_model_learns_and_the_run_folder_is_complete(uninterrupted):
    out, trainer, summary, first_loss = uninterrupted
    assert summary["step"] == 20 and summary["bad_steps"] == 0
    assert summary["loss"] < 0.5 * first_loss
    assert (out / "config.yaml").read_text().startswith("train:\n")
    assert "step 20/20" in (out / "train.log").read_text()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/mae", "grad_norm", "lr/encoder", "lr/decoder.no_decay", "bad_steps"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    peak = [e.value for e in events.Scalars("lr/decoder")]
    assert peak[0] == pytest.approx(1e-2 * WarmupCosine(4, 20)(4))  # the lr of step 5 (0-based 4)


def test_non_finite_losses_are_skipped_and_counted(tmp_path):
    trainer = make_trainer(tmp_path, nan_at=frozenset({3, 4}), ckpt_every=0)
    first = trainer.fit(until=5)  # steps 4 and 5 read batches 3 and 4
    assert first["bad_steps"] == 2 and math.isfinite(first["loss"])  # skipped steps stay out of the means
    summary = trainer.fit()
    assert summary["bad_steps"] == 2 and summary["step"] == 20
    assert all(torch.isfinite(w).all() for w in weights(trainer).values())


def test_too_many_bad_steps_in_a_row_stop_the_run(tmp_path):
    trainer = make_trainer(tmp_path, nan_at=frozenset({2, 3, 4}), max_bad_steps=3, ckpt_every=0)
    trainer.fit(until=2)
    before = weights(trainer)
    with pytest.raises(NonFiniteLossError, match=r"stopping at step 5: 3 non-finite .*train\.max_bad_steps=3"):
        trainer.fit()
    assert all(torch.equal(before[k], v) for k, v in weights(trainer).items())  # no update was applied


def test_gradients_are_clipped_to_grad_clip_before_the_step(tmp_path):
    """The optimiser steps on gradients of global norm <= grad_clip; grad_norm logs the norm before."""
    trainer = make_trainer(tmp_path, grad_clip=1e-3)
    norms, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        norms.append(torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None]).norm().item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    metrics = trainer.train_step(random_batch(0))
    assert metrics["grad_norm"] > 1e-2 and norms == [pytest.approx(1e-3, rel=1e-4)]


def test_a_forward_without_a_scalar_loss_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.forward = lambda batch: {"loss": torch.ones(2)}
    with pytest.raises(TypeError, match="scalar tensor 'loss'"):
        trainer.train_step(random_batch(0))


def test_validation_runs_periodically_in_eval_mode_without_grad(tmp_path):
    calls = []

    def validate(model, step):
        calls.append((step, model.training, torch.is_grad_enabled()))
        return {"loss": model(random_batch(10_000))["loss"].item()}

    trainer = make_trainer(tmp_path, validate=validate, val_every=8, steps=17)
    trainer.fit()
    assert calls == [(8, False, False), (16, False, False)] and trainer.model.training
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [8, 16]


class Brightness(nn.Module):
    """Predicts each image's mean from a 4x4 thumbnail (a model of collated mixture batches)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 1))

    def forward(self, batch):
        image = batch["image"]
        return {"loss": (self.net(image).squeeze(1) - image.mean((1, 2, 3))).pow(2).mean()}


def test_a_shapes_mixture_run_resumes_exactly(tmp_path):
    records = shapes_records(16, n=12, seed=0)
    sources = {task: RecordDataset(records, task, 16) for task in IMAGE_TASKS}

    def run(out_dir, until=None):
        cfg = TrainConfig(out_dir=str(out_dir), steps=6, warmup=1, log_every=3, ckpt_every=0, num_workers=0)
        torch.manual_seed(0)
        model = Brightness()
        optimizer, scheduler = build_optimizer({"decoder": model}, cfg)
        data = mixture_stream(MixtureDataset(sources, TaskMixture([0, 1, 3], seed=0)), batch_size=4)
        trainer = Trainer(model, optimizer, scheduler, data, cfg)
        trainer.fit(until)
        return model.state_dict()

    full = run(tmp_path / "full")
    run(tmp_path / "stopped", until=3)
    resumed = run(tmp_path / "stopped")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------------------- schedule


def test_warmup_cosine_follows_its_formula():
    f = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(9) == pytest.approx(0.1 + 0.9 * 0.5) and f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    with pytest.raises(ValueError, match="warmup <= total"):
        WarmupCosine(10, 5)


def test_param_groups_per_component():
    model = MLP()
    model.encoder[0].bias.requires_grad_(False)
    groups = param_groups({"encoder": model.encoder, "decoder": model.decoder},
                          LearningRates(default=1.0, decoder=2.0), weight_decay=0.1, model=model)
    summary = {g["name"]: (g["lr"], g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups}
    assert summary == {
        "encoder": (1.0, 0.1, [(32, 4)]),  # the frozen bias is left out
        "decoder": (2.0, 0.1, [(1, 32)]),
        "decoder.no_decay": (2.0, 0.0, [(1,)]),
    }
    with pytest.raises(ValueError, match="both components 'encoder' and 'llm'"):
        param_groups({"encoder": model.encoder, "llm": model}, LearningRates(), 0.0)
    with pytest.raises(ValueError, match=r"in no component .*decoder\.weight"):
        param_groups({"encoder": model.encoder}, LearningRates(), 0.0, model=model)
    with pytest.raises(ValueError, match="no learning rate for component 'body'"):
        param_groups({"body": model.encoder}, LearningRates(), 0.0)


def test_each_group_follows_the_schedule_from_its_own_peak():
    model = MLP()
    cfg = TrainConfig(steps=10, warmup=2, lr=LearningRates(default=1e-3, decoder=4e-3))
    optimizer, scheduler = build_optimizer({"encoder": model.encoder, "decoder": model.decoder}, cfg)
    f = WarmupCosine(2, 10)
    for step in range(6):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * f(step)] * 2 + [4e-3 * f(step)] * 2)
        optimizer.step()
        scheduler.step()


# ---------------------------------------------------------------------------------- config


def test_train_config_loads_and_overrides_like_the_project_config():
    cfg = from_dict(TrainConfig, {"steps": 50, "warmup": 10, "lr": {"default": 1e-4, "llm": 1e-5}, "betas": [0.9, 0.99]})
    apply_overrides(cfg, ["lr.vision_head=2e-4", "ratios=[1,2,2]", "resume=never"])
    assert (cfg.lr.of("llm"), cfg.lr.of("vision_head"), cfg.lr.of("projector")) == (1e-5, 2e-4, 1e-4)
    assert cfg.ratios == [1.0, 2.0, 2.0] and cfg.resume == "never"
    cfg.check()
    with pytest.raises(ConfigError, match="lr.llm_head"):
        apply_overrides(cfg, ["lr.llm_head=1"])
    for bad, message in [({"steps": 0}, "train.steps must be >= 1"), ({"betas": [0.9]}, "train.betas"),
                         ({"ratios": [0, 0, 0]}, "train.ratios")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).check()
