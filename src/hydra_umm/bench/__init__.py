"""`hydra-umm bench`: speed and robustness figures, each beside a reference measured in the same run.

Every suite module exposes ``run(include_paper: bool) -> list[Figure]``. Absolute timings depend
on the machine; the ratio against the in-run reference is the number to track. Achieved FLOP
rates (unit :data:`FLOP_RATE`) are referenced against the device's peak bf16 rate when one is
known or given, so their ratio is the model FLOP utilisation (MFU). ``--compare previous.json``
prints the change of every figure against an earlier run's JSON, matched by name.
"""

from __future__ import annotations

import importlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

SUITES = ("hydra_umm.bench.tokenizer", "hydra_umm.bench.shapes", "hydra_umm.bench.umm", "hydra_umm.bench.xtok",
          "hydra_umm.bench.train")
GPU_SUITES = ("hydra_umm.bench.gpu",)
FLOP_RATE = "GFLOP/s"  # the unit of achieved model FLOP rates (hydra_umm.bench.flops)
NAME_WIDTH = 72
LOWER_IS_BETTER = ("s", "ms", "s/image", "GiB")  # units where a smaller value is an improvement


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    reference: str = ""  # what `value` is compared against
    reference_value: Optional[float] = None

    @property
    def ratio(self) -> Optional[float]:
        if self.reference_value in (None, 0):
            return None
        return self.value / self.reference_value


def timeit(fn: Callable[[], object], iters: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_table(figures: list[Figure]) -> str:
    lines = [f"{'figure':<{NAME_WIDTH}} {'value':>12} {'unit':<10} {'ratio':>8}  reference"]
    for f in figures:
        ratio = f"{f.ratio:8.3f}" if f.ratio is not None else " " * 8
        lines.append(f"{f.name:<{NAME_WIDTH}} {f.value:12.4g} {f.unit:<10} {ratio}  {f.reference}")
    return "\n".join(lines)


def with_peak(figures: list[Figure], peak_tflops: Optional[float], description: str) -> list[Figure]:
    """The figures with every achieved FLOP rate referenced against ``peak_tflops`` (ratio = MFU)."""
    if peak_tflops is None:
        return [replace(f, reference=description) if f.unit == FLOP_RATE else f for f in figures]
    peak = peak_tflops * 1e3  # in FLOP_RATE units
    return [replace(f, reference=f"MFU vs {description}", reference_value=peak) if f.unit == FLOP_RATE else f
            for f in figures]


def read_figures(path: str | Path) -> list[Figure]:
    """The figures of a JSON file written by :func:`run_benchmarks`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results to compare with: {path}")
    try:
        rows = json.loads(path.read_text())
        return [Figure(r["name"], r["value"], r["unit"], r.get("reference", ""), r.get("reference_value"))
                for r in rows]
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"{path} is not a `hydra-umm bench` JSON (a list of figures): {e}") from None


def _change(before: Optional[float], now: Optional[float]) -> str:
    """The relative change in percent, or "-" where there is nothing to compare."""
    if before is None or now is None or before == 0:
        return "-"
    return f"{100 * (now / before - 1):+.1f}%"


def compare(figures: list[Figure], previous: list[Figure]) -> str:
    """A table of the change of every figure (value and ratio) against ``previous``, by name, with
    a verdict per unit direction; then the figures that are new and those that went missing."""
    before = {f.name: f for f in previous}
    lines = [f"{'figure':<{NAME_WIDTH}} {'before':>11} {'now':>11} {'unit':<10} {'change':>14} {'ratio change':>13}"]
    for f in figures:
        if f.name not in before:
            continue
        b = before[f.name]
        if b.unit != f.unit:
            lines.append(f"{f.name:<{NAME_WIDTH}} unit changed from {b.unit} to {f.unit}: not comparable")
            continue
        change = _change(b.value, f.value)
        if b.value != f.value and b.value:
            better = (f.value < b.value) == (f.unit in LOWER_IS_BETTER)
            change += " better" if better else " worse"
        lines.append(f"{f.name:<{NAME_WIDTH}} {b.value:11.4g} {f.value:11.4g} {f.unit:<10} {change:>14} "
                     f"{_change(b.ratio, f.ratio):>13}")
    now = {f.name for f in figures}
    new = [f.name for f in figures if f.name not in before]
    missing = [f.name for f in previous if f.name not in now]
    lines += [f"new: {name}" for name in new] + [f"missing: {name}" for name in missing]
    return "\n".join(lines)


def run_benchmarks(
    out: str | Path = "bench.json",
    include_paper: bool = True,
    suites: Sequence[str] = SUITES,
    previous: Optional[str | Path] = None,
    peak_tflops: Optional[float] = None,
    device: str = "cpu",
) -> list[Figure]:
    """Run the suites, print the table (and the comparison with ``previous``, a JSON of an earlier
    run), write the figures as JSON to ``out``. MFU is reported against ``peak_tflops`` or, on a
    CUDA ``device``, the table of known peaks (hydra_umm.bench.flops)."""
    import torch

    from hydra_umm.bench.flops import device_peak

    earlier = read_figures(previous) if previous is not None else None  # fail before the long run
    peak, description = device_peak(torch.device(device), peak_tflops)
    figures: list[Figure] = []
    for name in suites:
        figures += importlib.import_module(name).run(include_paper=include_paper)
    figures = with_peak(figures, peak, description)
    print(format_table(figures))
    if earlier is not None:
        print(f"\nchange against {previous}:")
        print(compare(figures, earlier))
    rows = [dict(asdict(f), ratio=f.ratio) for f in figures]
    Path(out).write_text(json.dumps(rows, indent=2))
    print(f"written to {out}")
    return figures
