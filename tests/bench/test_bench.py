"""The benchmark runner: JSON, MFU against a peak, --compare by figure name, and the CLI."""

import json
import sys
import types

import pytest

from hydra_umm import bench, cli
from hydra_umm.bench import FLOP_RATE, Figure, compare, read_figures, run_benchmarks


@pytest.fixture
def fake_suite(monkeypatch):
    """A suite module whose figures the test sets."""
    module = types.ModuleType("fake_suite")
    module.figures = [Figure("step: model FLOP rate", 500.0, FLOP_RATE), Figure("sampling", 2.0, "s", "ref", 4.0)]
    module.run = lambda include_paper: list(module.figures)
    monkeypatch.setitem(sys.modules, "fake_suite", module)
    return module


def test_compare_reports_change_direction_and_new_and_missing_figures():
    previous = [Figure("sampling", 2.0, "s", "ref", 4.0), Figure("throughput", 10.0, "tok/s"),
                Figure("gone", 1.0, "s"), Figure("relabelled", 1.0, "s")]
    now = [Figure("sampling", 1.0, "s", "ref", 4.0), Figure("throughput", 9.0, "tok/s"),
           Figure("fresh", 3.0, "s"), Figure("relabelled", 1.0, "GiB")]
    lines = {line.split()[0]: line for line in compare(now, previous).splitlines()[1:]}
    assert "-50.0% better" in lines["sampling"] and "-50.0%" in lines["sampling"].split("better")[1]  # ratio too
    assert "-10.0% worse" in lines["throughput"]
    assert "not comparable" in lines["relabelled"]
    assert lines["new:"] == "new: fresh" and lines["missing:"] == "missing: gone"


def test_read_figures_refuses_what_bench_did_not_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="no benchmark results"):
        read_figures(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="not a `hydra-umm bench` JSON"):
        read_figures(bad)


def test_run_writes_json_with_mfu_and_compares(fake_suite, tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run_benchmarks(first, suites=("fake_suite",), peak_tflops=2.0)
    rows = {r["name"]: r for r in json.loads(first.read_text())}
    assert rows["step: model FLOP rate"]["ratio"] == pytest.approx(500.0 / 2000.0)  # MFU
    assert rows["sampling"]["ratio"] == pytest.approx(0.5)
    assert read_figures(first)[1] == Figure("sampling", 2.0, "s", "ref", 4.0)

    fake_suite.figures[1] = Figure("sampling", 3.0, "s", "ref", 4.0)
    capsys.readouterr()
    run_benchmarks(second, suites=("fake_suite",), previous=first)
    out = capsys.readouterr().out
    assert f"change against {first}" in out and "+50.0% worse" in out
    assert json.loads(second.read_text())[0]["ratio"] is None  # no peak on a CPU unless given


def test_cli_bench_compare_and_peak(fake_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "SUITES", ("fake_suite",))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    cli.main(["bench", "--out", str(first), "--peak-tflops", "1"])
    assert json.loads(first.read_text())[0]["ratio"] == pytest.approx(0.5)
    cli.main(["bench", "--out", str(second), "--compare", str(first)])
    assert "change against" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", "--out", str(second), "--compare", str(tmp_path / "missing.json")])
    assert stop.value.code == 2 and "no benchmark results" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", "--out", str(second), "--peak-tflops", "-3"])
    assert stop.value.code == 2 and "positive" in capsys.readouterr().err


def test_cli_bench_gpu_refuses_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", "--gpu", "--out", str(tmp_path / "gpu.json")])
    assert "needs a CUDA device" in str(stop.value.code)
    assert not (tmp_path / "gpu.json").exists()
