"""`hydra-umm bench`: speed and robustness figures, each beside a reference measured in the same run.

Every suite module exposes ``run(include_paper: bool) -> list[Figure]``. Absolute timings depend
on the machine; the ratio against the in-run reference is the number to track.
"""

from __future__ import annotations

import importlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

SUITES = ("hydra_umm.bench.tokenizer", "hydra_umm.bench.shapes", "hydra_umm.bench.umm")


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
    lines = [f"{'figure':<58} {'value':>12} {'unit':<10} {'ratio':>8}  reference"]
    for f in figures:
        ratio = f"{f.ratio:8.3f}" if f.ratio is not None else " " * 8
        lines.append(f"{f.name:<58} {f.value:12.4g} {f.unit:<10} {ratio}  {f.reference}")
    return "\n".join(lines)


def run_benchmarks(out: str | Path = "bench.json", include_paper: bool = True) -> list[Figure]:
    figures: list[Figure] = []
    for name in SUITES:
        figures += importlib.import_module(name).run(include_paper=include_paper)
    print(format_table(figures))
    rows = [dict(asdict(f), ratio=f.ratio) for f in figures]
    Path(out).write_text(json.dumps(rows, indent=2))
    print(f"written to {out}")
    return figures
