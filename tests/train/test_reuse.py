"""Reuse of finished runs: reused when asked for the same settings (places aside, settings added
since counting as the same), refused with the changed settings named otherwise."""

import pytest
import yaml

from hydra_umm.config import load_config
from hydra_umm.train.reuse import ASKED_FILE, MODEL_WEIGHTS, is_done, record_stage, refuse_changes, train_once


def finish(run) -> None:
    (run / "model").mkdir(parents=True, exist_ok=True)
    (run / "model" / MODEL_WEIGHTS).write_bytes(b"")


def test_a_finished_run_is_reused_only_for_the_settings_it_was_asked_for(tmp_path):
    cfg = load_config("tiny", [f"train.out_dir={tmp_path}", "train.steps=7", "train.warmup=1"])
    record_stage(cfg)
    assert not is_done(cfg)  # recorded, not finished
    finish(tmp_path)
    assert is_done(cfg)
    assert is_done(load_config("tiny", [f"train.out_dir={tmp_path}", "train.steps=7", "train.warmup=1", "data=elsewhere"]))  # a place
    with pytest.raises(ValueError, match=r"train.steps: 7 there, 9 now.*remove it"):
        is_done(load_config("tiny", [f"train.out_dir={tmp_path}", "train.steps=9", "train.warmup=1"]))
    asked = yaml.safe_load((tmp_path / ASKED_FILE).read_text())
    del asked["train"]["steps"]  # a setting added since the run was recorded
    (tmp_path / ASKED_FILE).write_text(yaml.safe_dump(asked))
    assert is_done(load_config("tiny", [f"train.out_dir={tmp_path}", "train.steps=9", "train.warmup=1"]))


def test_a_run_finished_before_runs_were_recorded_is_reused_with_a_warning(tmp_path, caplog):
    finish(tmp_path)
    assert is_done(load_config("tiny", [f"train.out_dir={tmp_path}"]))
    assert "is reused unchecked" in caplog.text


def test_refuse_changes_names_changed_keys_only(tmp_path):
    refuse_changes(tmp_path, {"a": 1}, {"a": 1, "b": 2}, "holds another run")
    with pytest.raises(ValueError, match=r"holds another run \(a: 1 there, 3 now\)"):
        refuse_changes(tmp_path, {"a": 1, "b": 2}, {"a": 3, "b": 2}, "holds another run")


def test_train_once_records_before_it_trains_and_then_reuses(tmp_path):
    cfg = load_config("tiny", [f"train.out_dir={tmp_path}", "train.steps=7", "train.warmup=1"])
    calls = []

    def train(run):
        assert (tmp_path / ASKED_FILE).is_file()  # recorded first: an interrupted run is still checked
        calls.append(run)
        finish(tmp_path)

    assert train_once(cfg, train, lambda: calls.append("announced")) == tmp_path / "model"
    assert calls == ["announced", cfg]
    assert train_once(cfg, train) == tmp_path / "model" and len(calls) == 2  # reused, not trained again
