"""The data mixture: task types drawn by ratio (instruction understanding : caption understanding :
text-to-image, and HYDRA-X's text, clip and edit tasks), deterministic under a seed, across
DataLoader workers and across ranks.

The training stream is indexed by a global sample index i = 0, 1, 2, ... Everything about sample i
is a pure function of (seed, i), so any worker on any rank computes the same thing:

- its task: the stream is cut into units of ``group`` consecutive samples (1: every sample draws
  its own task; a rank's batch size: one task per batch, as Harmon's code draws them) and the
  units into blocks of ``block``; each block holds exactly round(block * ratio) units of each task
  (largest-remainder rounding) in an order drawn from ``default_rng([seed, block index])``;
- which record of that task's source: the k-th sample of task t (k counted over the whole stream,
  known in closed form from the block counts) reads position k mod n of a permutation of the n
  records drawn from ``default_rng([seed, t, k // n])``, so every source is reshuffled at each of
  its own epochs, independently of the other sources.

:class:`StreamSampler` gives rank r of w, at step s, the indices (s * w + r) * B + [0, B): the
global batch of a step is the same samples for any split of w * B, and resuming at step s needs
only s. :class:`BatchStream` is the resumable iterator the Trainer reads.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Sampler

from hydra_umm.data.datasets import IMAGE_TASKS, TASKS, collate_items


class TaskMixture:
    """Which task global sample index ``i`` belongs to, and its ordinal within that task."""

    def __init__(self, ratios: Mapping[str, float] | Sequence[float], seed: int, block: int = 1000, group: int = 1):
        if not isinstance(ratios, Mapping):
            if len(ratios) != len(IMAGE_TASKS):
                raise ValueError(f"ratios must give {len(IMAGE_TASKS)} numbers for {IMAGE_TASKS} (or map tasks of "
                                 f"{TASKS} to ratios), got {list(ratios)}")
            ratios = dict(zip(IMAGE_TASKS, ratios))
        unknown = set(ratios) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)} in the mixture; tasks are {TASKS}")
        weights = np.array([float(ratios.get(t, 0.0)) for t in TASKS])
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"mixture ratios must be finite, >= 0 and not all 0, got {dict(ratios)}")
        if block < 1 or group < 1:
            raise ValueError(f"block and group must be >= 1, got block={block}, group={group}")
        self.seed, self.block, self.group = seed, block, group
        self.probs = weights / weights.sum()
        exact = self.probs * block
        counts = np.floor(exact).astype(int)
        counts[np.argsort(-(exact - counts), kind="stable")[: block - counts.sum()]] += 1
        self.counts = counts  # units of each task per block; sums to `block`
        self.tasks = tuple(t for t, c in zip(TASKS, counts) if c > 0)

    @lru_cache(maxsize=8)
    def _layout(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b: the task id of each unit and its rank among the block's units of that task."""
        ids = np.random.default_rng([self.seed, b]).permutation(np.repeat(np.arange(len(TASKS)), self.counts))
        ranks = np.empty(self.block, dtype=np.int64)
        for t in range(len(TASKS)):
            where = ids == t
            ranks[where] = np.arange(where.sum())
        return ids, ranks

    def locate(self, i: int) -> tuple[str, int]:
        """(task of sample i, how many samples of that task come before it in the stream)."""
        if i < 0:
            raise IndexError(f"sample index must be >= 0, got {i}")
        unit, offset = divmod(i, self.group)
        b, p = divmod(unit, self.block)
        ids, ranks = self._layout(b)
        t = int(ids[p])
        return TASKS[t], (b * int(self.counts[t]) + int(ranks[p])) * self.group + offset

    def task(self, i: int) -> str:
        return self.locate(i)[0]


class MixtureDataset(Dataset):
    """An unbounded map-style dataset: item i is the item of source ``sources[task(i)]`` chosen as
    the module docstring says. ``sources`` maps each task with a non-zero ratio to a map-style
    dataset that yields that task's items."""

    def __init__(self, sources: Mapping[str, Dataset], mixture: TaskMixture):
        missing = [t for t in mixture.tasks if t not in sources]
        if missing:
            raise ValueError(f"the mixture draws task(s) {missing} but no data source is given for them")
        for t in mixture.tasks:
            if isinstance(sources[t], IterableDataset) or len(sources[t]) == 0:
                raise ValueError(f"source of task {t!r} must be a non-empty map-style dataset")
        self.sources, self.mixture = dict(sources), mixture

    @lru_cache(maxsize=16)
    def _permutation(self, task: str, epoch: int) -> np.ndarray:
        t = TASKS.index(task)
        return np.random.default_rng([self.mixture.seed, t, epoch]).permutation(len(self.sources[task]))

    def __getitem__(self, i: int) -> dict:
        task, k = self.mixture.locate(i)
        epoch, j = divmod(k, len(self.sources[task]))
        return self.sources[task][int(self._permutation(task, epoch)[j])]

    @property
    def skipped(self) -> int:
        """Unreadable images skipped so far by all sources (in this process and its workers)."""
        return sum(map(skipped_count, self.sources.values()))


def skipped_count(source) -> int:
    """Unreadable images (or clips) skipped so far by a source: a mixture or stream (its ``skipped``),
    a concatenation of sources (their sum), or a dataset with a skip counter (else 0)."""
    if hasattr(source, "skipped"):
        return source.skipped
    if isinstance(source, ConcatDataset):
        return sum(map(skipped_count, source.datasets))
    return source.skips.count if hasattr(source, "skips") else 0


class StreamSampler(Sampler):
    """Batch sampler over the global stream for one rank, from step ``start`` on, without end."""

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or start < 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad stream sampler: batch_size={batch_size}, start={start}, rank={rank}/{world_size}")
        self.batch_size, self.start, self.rank, self.world_size = batch_size, start, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in itertools.count(self.start):
            first = (step * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))


class BatchStream:
    """A resumable batch iterator: ``make(position)`` builds an iterator that starts at batch
    ``position``; the stream counts the batches it has handed out, and ``state_dict`` /
    ``load_state_dict`` save and restore that count (the "sampler position" of a checkpoint)."""

    def __init__(self, make: Callable[[int], Iterator[dict]], position: int = 0):
        self.make, self.position = make, position
        self._iterator: Iterator[dict] | None = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self.make(self.position)
        batch = next(self._iterator)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position, self._iterator = int(state["position"]), None


def _private_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed when an iterator starts; drawing it from a generator
    of its own keeps the global torch RNG (dropout, flow noise) the same whether a run resumed or not."""
    return torch.Generator().manual_seed(0)


def mixture_stream(
    dataset: MixtureDataset, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0
) -> BatchStream:
    """The resumable stream of collated batches of ``dataset`` for one rank."""

    def make(position: int) -> Iterator[dict]:
        sampler = StreamSampler(batch_size, position, rank, world_size)
        return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_items, num_workers=num_workers,
                               generator=_private_generator()))

    return BatchStream(make)


def shard_stream(dataset: IterableDataset, batch_size: int, num_workers: int = 0) -> BatchStream:
    """The resumable stream of an iterable dataset (webdataset shards, split across ranks by the
    dataset itself). Resuming at position p reads and drops the first p batches: exact when the
    shards, ranks and workers are the same as before."""

    def make(position: int) -> Iterator[dict]:
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_items, num_workers=num_workers,
                            generator=_private_generator())
        return itertools.islice(iter(loader), position, None)

    return BatchStream(make)
