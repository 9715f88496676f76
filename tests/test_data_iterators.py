"""Length batching, sharding, dummy batches and mid-epoch resume of the epoch iterator."""

import numpy as np
import pytest
import torch

from fairseq_lite.data.batching import batch_by_size
from fairseq_lite.data.iterators import CountingIterator, EpochBatchIterator, GroupedIterator
from fairseq_lite.errors import CheckpointError, DataError
from fairseq_lite.tasks.fairseq_task import FairseqTask


class LengthDataset(torch.utils.data.Dataset):
    """Items are their own index; sizes are random lengths; the collater returns {} for an empty batch."""

    def __init__(self, n, seed=0):
        self.sizes = np.random.default_rng(seed).integers(100, 2000, n)
        self.epochs_seen = []

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return i

    def collater(self, items):
        return {"id": torch.tensor(items)} if items else {}

    def ordered_indices(self):
        return np.lexsort((np.random.permutation(len(self)), self.sizes))[::-1]

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def set_epoch(self, epoch):
        self.epochs_seen.append(epoch)


def greedy_reference(indices, tokens, max_tokens, max_sentences, mult):
    out, s, n = [], 0, len(indices)
    while s < n:
        k = m = 0
        while s + k < n and k < max_sentences and (k + 1) * max(m, tokens[s + k]) <= max_tokens:
            m, k = max(m, tokens[s + k]), k + 1
        if s + k < n and k >= mult:
            k = k // mult * mult
        out.append(list(indices[s : s + k]))
        s += k
    return out


def test_batch_by_size_matches_greedy_packing():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 150))
        tokens = rng.integers(1, 100, n)
        max_tokens, max_sentences, mult = int(rng.integers(100, 1000)), int(rng.integers(1, 40)), int(rng.integers(1, 9))
        indices = rng.permutation(n)
        got = [list(b) for b in batch_by_size(indices, tokens, max_tokens, max_sentences, mult)]
        assert got == greedy_reference(indices, tokens, max_tokens, max_sentences, mult)
        position = np.argsort(indices)
        assert all(len(b) * tokens[position[b]].max() <= max_tokens for b in got)


def test_batch_by_size_multiple_and_limits():
    tokens = np.full(50, 10)
    batches = batch_by_size(np.arange(50), tokens, max_tokens=205, required_batch_size_multiple=8)
    assert [len(b) for b in batches] == [16, 16, 18]  # full batches cut to 16; the last one is not full
    assert [len(b) for b in batch_by_size(np.arange(5), tokens[:5], max_sentences=2)] == [2, 2, 1]
    with pytest.raises(DataError, match="example 3 has 500 tokens .* more than max_tokens=100"):
        batch_by_size(np.arange(5), np.array([10, 10, 10, 500, 10]), max_tokens=100)


def make_task_iterator(dataset, **kwargs):
    task = FairseqTask(cfg=None)
    args = dict(max_tokens=6000, required_batch_size_multiple=1, seed=3, disable_iterator_cache=True)
    args.update(kwargs)
    return task.get_batch_iterator(dataset, **args)


def collect(itr):
    return [batch["id"].tolist() if batch else [] for batch in itr]


def test_every_batch_within_max_tokens_and_seeded_shuffle():
    ds = LengthDataset(300)
    a = collect(make_task_iterator(ds).next_epoch_itr())
    assert all(len(b) * ds.sizes[b].max() <= 6000 for b in a)
    assert sorted(i for b in a for i in b) == list(range(300))
    assert a == collect(make_task_iterator(ds).next_epoch_itr())  # same seed, same epoch → same batches
    epoch_iter = make_task_iterator(ds)
    first, second = collect(epoch_iter.next_epoch_itr()), collect(epoch_iter.next_epoch_itr())
    assert epoch_iter.epoch == 2 and first != second  # reshuffled with seed + epoch
    assert ds.epochs_seen[-1] == 2


def test_two_ranks_see_every_index_once_with_dummy_batches():
    ds = LengthDataset(301, seed=1)
    ranks = [collect(make_task_iterator(ds, num_shards=2, shard_id=r).next_epoch_itr()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # same number of steps on each rank
    seen = [i for rank in ranks for b in rank for i in b]
    assert sorted(seen) == list(range(301))
    n_batches = len(make_task_iterator(ds).next_epoch_itr())
    assert n_batches % 2 == 1 and ranks[1][-1] == []  # the odd batch out → an empty dummy on rank 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mid_epoch_restore_yields_exactly_the_remaining_batches(num_workers):
    ds = LengthDataset(200, seed=2)
    epoch_iter = make_task_iterator(ds, num_workers=num_workers, epoch=2)
    itr = epoch_iter.next_epoch_itr()
    full = collect(make_task_iterator(ds, epoch=2).next_epoch_itr())
    head = [next(itr)["id"].tolist() for _ in range(5)]
    state = epoch_iter.state_dict()
    assert state == {"version": 2, "epoch": 2, "iterations_in_epoch": 5, "shuffle": True}

    # as the trainer does: build the iterator for the checkpoint's epoch, then restore the position
    resumed = make_task_iterator(ds, num_workers=num_workers, epoch=state["epoch"])
    resumed.load_state_dict(state)
    assert resumed.iterations_in_epoch == 5 and resumed.next_epoch_idx == 2
    itr2 = resumed.next_epoch_itr()
    rest = collect(itr2)
    assert head + rest == full
    assert itr2.n == len(full) and resumed.end_of_epoch()
    assert resumed.state_dict() == {"version": 2, "epoch": 3, "iterations_in_epoch": 0, "shuffle": True}
    assert resumed.next_epoch_idx == 3


def test_restore_past_the_end_is_an_error():
    ds = LengthDataset(50)
    epoch_iter = make_task_iterator(ds)
    with pytest.raises(CheckpointError, match="reset_dataloader"):
        epoch_iter.load_state_dict({"version": 2, "epoch": 1, "iterations_in_epoch": 10_000, "shuffle": True})


def test_rebuild_batches_per_epoch_and_iterator_cache():
    class Cfg:
        rebuild_batches = True

    ds = LengthDataset(100)
    task = FairseqTask(Cfg())
    epoch_iter = task.get_batch_iterator(ds, max_tokens=5000, seed=1)
    assert task.get_batch_iterator(ds, max_tokens=5000, seed=1) is epoch_iter
    assert callable(epoch_iter.batch_sampler)
    e1 = [sorted(b) for b in collect(epoch_iter.next_epoch_itr(shuffle=False))]
    e2 = [sorted(b) for b in collect(epoch_iter.next_epoch_itr(shuffle=False))]
    assert e1 != e2  # tie-breaks among equal lengths differ with seed + epoch
    assert sorted(i for b in e2 for i in b) == list(range(100))


def test_counting_and_grouped_iterators():
    itr = CountingIterator(range(10))
    assert len(itr) == 10 and itr.n == 0
    itr.skip(3)
    assert next(itr) == 3 and itr.n == 4
    itr.take(6)
    assert list(itr) == [4, 5] and not itr.has_next()
    grouped = GroupedIterator(CountingIterator(range(7)), 3)
    assert len(grouped) == 3 and list(grouped) == [[0, 1, 2], [3, 4, 5], [6]]


def test_skip_remainder_and_fix_batches_to_gpus():
    ds = LengthDataset(120)
    full = make_task_iterator(ds, num_shards=2, shard_id=0)
    short = make_task_iterator(ds, num_shards=2, shard_id=0, skip_remainder_batch=True)
    assert len(short) == len(full) - 1 and len(collect(short.next_epoch_itr())) == len(full) - 1
    fixed = make_task_iterator(ds, num_shards=2, shard_id=1)
    e1 = collect(fixed.next_epoch_itr(fix_batches_to_gpus=True))
    e2 = collect(fixed.next_epoch_itr(fix_batches_to_gpus=True))
    assert sorted(map(tuple, e1)) == sorted(map(tuple, e2)) and e1 != e2
