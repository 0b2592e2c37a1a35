"""Fixtures shared by the whole suite."""

import pytest
import torch
from threadpoolctl import threadpool_limits

from hydra_umm.demo import run_demo
from micro_plan import MICRO


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the models under test are tiny, more threads only add contention, and the suite
    also runs subprocesses (torchrun ranks, a server) beside itself on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # numpy / scikit-learn (t-SNE) BLAS threads likewise
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def micro_demo(tmp_path_factory):
    """The micro demo, run once: (its folder, its results, what it said)."""
    said, out = [], tmp_path_factory.mktemp("demo")
    return out, run_demo(out, MICRO, say=said.append), said
