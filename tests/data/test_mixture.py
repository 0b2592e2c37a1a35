import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from hydra_umm.data.mixture import BatchStream, MixtureDataset, StreamSampler, TaskMixture, mixture_stream


class Tagged(Dataset):
    """n text items whose prompt names the source and the index."""

    def __init__(self, name: str, n: int):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"kind": "text", "image": None, "prompt": f"{self.name}:{i}", "target": ""}


SOURCES = {"instruction": Tagged("instruction", 3), "caption": Tagged("caption", 5), "t2i": Tagged("t2i", 7)}


def test_tasks_are_a_pure_function_of_seed_and_index():
    a, b = TaskMixture([1, 2, 2], seed=3, block=50), TaskMixture([1, 2, 2], seed=3, block=50)
    order = [a.task(i) for i in range(400)]
    assert order == [b.task(i) for i in range(400)]
    assert order == [b.task(i) for i in reversed(range(400))][::-1]  # no hidden state: any access order
    assert order != [TaskMixture([1, 2, 2], seed=4, block=50).task(i) for i in range(400)]
    assert order[:50] != order[50:100]  # each block has its own order


@pytest.mark.parametrize("ratios, expected", [([1, 2, 2], [20, 40, 40]), ([0, 1, 3], [0, 25, 75]),
                                              ([1, 1, 1], [34, 33, 33])])
def test_every_block_holds_the_exact_ratio(ratios, expected):
    mix = TaskMixture(ratios, seed=0, block=100)
    for b in range(5):
        counts = Counter(mix.task(i) for i in range(100 * b, 100 * (b + 1)))
        assert [counts.get(t, 0) for t in ("instruction", "caption", "t2i")] == expected


def test_ordinal_counts_earlier_samples_of_the_same_task():
    mix = TaskMixture({"caption": 2, "t2i": 1}, seed=1, block=7)
    seen = Counter()
    for i in range(100):
        task, k = mix.locate(i)
        assert k == seen[task]
        seen[task] += 1


def test_one_task_per_group_keeps_the_ratio_and_the_ordinals():
    mix, per_sample = TaskMixture([0, 1, 4], seed=2, block=10, group=4), TaskMixture([0, 1, 4], seed=2, block=10)
    seen = Counter()
    for batch in range(40):  # 4 blocks of 10 batches of 4
        located = [mix.locate(i) for i in range(4 * batch, 4 * batch + 4)]
        assert len({task for task, _ in located}) == 1  # the whole batch is one task
        for task, k in located:
            assert k == seen[task]  # each task's stream is still read in order, without gaps
            seen[task] += 1
        assert located[0][0] == per_sample.task(batch)  # batch b draws what sample b would
    assert seen == {"caption": 32, "t2i": 128}  # 1 : 4 exactly, in batches
    with pytest.raises(ValueError, match="group=0"):
        TaskMixture([1, 1, 1], seed=0, group=0)


@pytest.mark.parametrize("ratios, message", [([1, 2], "3 numbers"), ({"vqa": 1}, "unknown task"),
                                             ([0, 0, 0], "not all 0"), ([1, -1, 1], ">= 0")])
def test_bad_ratios_are_refused(ratios, message):
    with pytest.raises(ValueError, match=message):
        TaskMixture(ratios, seed=0)


def test_mixture_dataset_reads_each_source_as_a_permutation_per_epoch():
    mix = TaskMixture([1, 2, 2], seed=5, block=10)
    ds = MixtureDataset(SOURCES, mix)
    by_task = {t: [] for t in SOURCES}
    for i in range(300):
        item = ds[i]
        name, index = item["prompt"].split(":")
        assert name == mix.task(i)
        by_task[name].append(int(index))
    for task, indices in by_task.items():
        n = len(SOURCES[task])
        epochs = [indices[e * n:(e + 1) * n] for e in range(len(indices) // n)]
        assert all(sorted(e) == list(range(n)) for e in epochs)  # every record once per epoch
        assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs
    twins = MixtureDataset({"caption": Tagged("caption", 6), "t2i": Tagged("t2i", 6)}, TaskMixture([0, 1, 1], seed=0))
    first = {"caption": [], "t2i": []}
    for i in range(24):
        name, index = twins[i]["prompt"].split(":")
        first[name].append(int(index))
    assert first["caption"][:6] != first["t2i"][:6]  # sources of one size are shuffled each their own way
    with pytest.raises(ValueError, match="no data source is given for them"):
        MixtureDataset({"t2i": SOURCES["t2i"]}, mix)


def prompts(stream, n):
    return [batch["prompt"] for batch in itertools.islice(stream, n)]


def test_the_global_batch_is_the_same_for_any_split_over_ranks_and_workers():
    ds = MixtureDataset(SOURCES, TaskMixture([1, 2, 2], seed=0, block=20))
    single = prompts(mixture_stream(ds, batch_size=4), 5)
    ranks = [prompts(mixture_stream(ds, batch_size=2, rank=r, world_size=2), 5) for r in range(2)]
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == single
    assert prompts(mixture_stream(ds, batch_size=4, num_workers=2), 5) == single


def test_batch_stream_resumes_at_its_position():
    ds = MixtureDataset(SOURCES, TaskMixture([1, 2, 2], seed=0, block=20))
    uninterrupted = prompts(mixture_stream(ds, batch_size=3), 8)
    first = mixture_stream(ds, batch_size=3)
    head = prompts(first, 3)
    state = first.state_dict()
    assert state == {"position": 3}
    resumed = mixture_stream(ds, batch_size=3)
    resumed.load_state_dict(state)
    assert head + prompts(resumed, 5) == uninterrupted


def test_starting_a_stream_leaves_the_global_rng_alone():
    ds = MixtureDataset(SOURCES, TaskMixture([1, 2, 2], seed=0, block=20))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(mixture_stream(ds, batch_size=2))
    assert torch.equal(torch.rand(3), expected)


def test_stream_sampler_indices():
    it = iter(StreamSampler(batch_size=2, start=3, rank=1, world_size=2))
    assert next(it) == [14, 15] and next(it) == [18, 19]
    with pytest.raises(ValueError, match="rank=2/2"):
        StreamSampler(2, rank=2, world_size=2)


def test_batch_stream_counts_positions_of_any_iterator():
    stream = BatchStream(lambda p: iter(np.arange(p, 100)))
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.load_state_dict({"position": 10})
    assert next(stream) == 10 and stream.state_dict() == {"position": 11}
