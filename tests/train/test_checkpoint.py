import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hydra_umm.train.checkpoint import (
    checkpoint_dir,
    checkpoints,
    latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_save_keeps_the_last_n_and_latest_finds_the_newest(tmp_path):
    assert latest(tmp_path) is None
    for step in [5, 10, 100, 1000]:
        save_checkpoint({"step": step, "w": torch.full((3,), float(step))}, tmp_path, step, keep_last=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000100.pt", "step_00001000.pt"]
    state = load_checkpoint(latest(tmp_path))
    assert state["step"] == 1000 and torch.equal(state["w"], torch.full((3,), 1000.0))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")
    os.utime(latest(tmp_path), (1_000_000, 1_000_000))  # copied without its times: step 1000 looks oldest
    assert latest(tmp_path).name == "step_00001000.pt"  # ranked by step, not by file time


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in the NumPy state
    save_checkpoint({"rng": rng_state()}, tmp_path, 1, keep_last=1)
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(latest(tmp_path))["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


WRITER = """
import sys, torch
from hydra_umm.train.checkpoint import save_checkpoint
run_dir = sys.argv[1]
big = torch.empty(6_000_000)  # 24 MB: most of the loop's time is spent inside the save
step = 0
while True:
    step += 1
    big.fill_(step)
    save_checkpoint({"step": step, "big": big}, run_dir, step, keep_last=2)
"""


def test_a_process_killed_mid_save_leaves_a_loadable_latest(tmp_path):
    """SIGKILL a writer while it saves in a loop; latest() must load and be consistent. Repeat
    until a kill lands inside a save (a temporary file is left behind), at most 6 times."""
    killed_mid_save = 0
    for attempt in range(6):
        run_dir = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir)])
        try:
            deadline = time.monotonic() + 60
            while len(checkpoints(run_dir)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert checkpoints(run_dir), "the writer never finished a checkpoint"
            time.sleep(random.Random(attempt).uniform(0.0, 0.2))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        leftovers = list(checkpoint_dir(run_dir).glob(".step_*.tmp"))
        killed_mid_save += bool(leftovers)
        state = load_checkpoint(latest(run_dir))
        assert torch.equal(state["big"], torch.full_like(state["big"], float(state["step"])))
        if leftovers:
            save_checkpoint({"step": -1}, run_dir, state["step"] + 1, keep_last=2)  # a resumed run
            assert not list(checkpoint_dir(run_dir).glob(".step_*.tmp"))  # cleans the leftover
            break
    assert killed_mid_save, "no kill landed inside a save"
