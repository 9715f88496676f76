"""Epoch batch iteration with sharding and mid-epoch resume (fairseq's ``data/iterators.py``).

``EpochBatchIterator`` turns a list of index batches into one DataLoader per epoch: batches are shuffled
with ``seed + epoch``, dealt round-robin to the data-parallel ranks (``num_shards``/``shard_id``), and
counted, so that ``state_dict()`` = (epoch, iterations_in_epoch) restores exactly the remaining batches.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from fairseq_lite.errors import CheckpointError, FairseqLiteError

logger = logging.getLogger(__name__)

Batches = Sequence[Sequence[int]]


class CountingIterator:
    """Wraps an iterable and counts what it has yielded (fairseq's ``CountingIterator``).

    ``n`` is the number of items consumed so far, starting at ``start`` (the resume offset);
    ``len()`` is ``total``, the position where iteration stops.
    """

    def __init__(self, iterable: Iterable, start: int = 0, total: Optional[int] = None):
        self._itr = iter(iterable)
        self.n = start
        self.total = total if total is not None else start + len(iterable)

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> "CountingIterator":
        return self

    def __next__(self) -> Any:
        if not self.has_next():
            raise StopIteration
        try:
            item = next(self._itr)
        except StopIteration:
            raise IndexError(
                f"iterator expected {self.total} items but stopped after {self.n}; the batches changed under it"
            )
        self.n += 1
        return item

    def has_next(self) -> bool:
        return self.n < self.total

    def skip(self, k: int) -> "CountingIterator":
        """Consume and drop the next ``k`` items."""
        for _ in itertools.islice(self, k):
            pass
        return self

    def take(self, k: int) -> "CountingIterator":
        """Stop after ``k`` items in total (counting from the epoch start, like ``n``)."""
        self.total = min(self.total, k)
        return self


class GroupedIterator(CountingIterator):
    """Chunks of ``chunk_size`` consecutive items (fairseq's ``GroupedIterator`` for ``update_freq``)."""

    def __init__(self, iterable: CountingIterator, chunk_size: int):
        self.chunk_size = chunk_size
        groups = _chunks(iterable, chunk_size)
        super().__init__(
            groups,
            start=math.ceil(getattr(iterable, "n", 0) / chunk_size),
            total=math.ceil(len(iterable) / chunk_size),
        )


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _one_thread_worker(worker_id: int) -> None:
    """DataLoader worker init: one intra-op thread per worker (many workers × many threads starve the GPU)."""
    torch.set_num_threads(1)


def worker_error_message(exc: BaseException) -> Optional[str]:
    """The original message of an error that torch re-raised from a DataLoader worker, whose text is
    "Caught <Error> in DataLoader worker process N. Original Traceback ..."; None for any other error."""
    text = str(exc)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return None
    cls = type(exc)
    for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        at = text.rfind(f"\n{name}: ")
        if at >= 0:
            return text[at + len(name) + 3 :].strip()
    return None


def _without_worker_tracebacks(loader: Iterable) -> Iterator:
    """Iterate ``loader``; a fairseq_lite error or OSError raised in a worker comes back with its own message
    (one line, what the CLI prints) instead of the worker's whole traceback, which stays in ``__cause__``."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (FairseqLiteError, OSError) as exc:
            message = worker_error_message(exc)
            if message is None:
                raise
            raise type(exc)(message) from exc
        yield batch


def shuffle_batches(batches: List, seed: int) -> List:
    """Shuffle the batch order with numpy seeded by ``seed`` (the same order as fairseq's ``shuffle_batches``)."""
    order = np.random.RandomState(seed % 2**32).permutation(len(batches))
    return [batches[i] for i in order]


class EpochBatchIterator:
    """Iterates over a dataset in pre-built batches, one epoch at a time (fairseq's ``EpochBatchIterator``).

    Args:
        dataset: map-style dataset; ``dataset.set_epoch(epoch)`` is called when it has one.
        collate_fn: merges a list of items into a batch (``dataset.collater``); it must return ``{}`` for
            an empty list — see "dummy batches" below.
        batch_sampler: a list of index arrays, or a callable ``epoch -> batches`` that rebuilds them
            each epoch (fairseq's ``rebuild_batches``).
        seed: batches are shuffled with ``seed + epoch``.
        num_shards, shard_id: data parallelism; rank ``shard_id`` gets batches
            ``shard_id, shard_id + num_shards, ...`` of the shuffled list.
        num_workers: DataLoader worker processes (0 = load in the main process); each runs one
            intra-op thread.
        epoch: the epoch the first ``next_epoch_itr()`` starts (1-based).
        buffer_size: batches to prefetch across the workers (``dataset.data_buffer_size``).
        skip_remainder_batch: drop each rank's last batch of the epoch.
        grouped_shuffling: shuffle groups of ``num_shards`` consecutive batches together, so that the
            ranks of one step keep getting batches of similar length.

    Dummy batches: when the number of batches does not divide by ``num_shards``, the ranks that run
    out receive an empty placeholder batch, collated to ``{}``, so that every rank takes the same
    number of steps. The trainer must run such a step on a real batch it kept (fairseq's dummy batch)
    and multiply its loss by 0 (``ignore_grad=True``), so the gradient all-reduce still happens.
    """

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[list], Dict[str, Any]],
        batch_sampler: Union[Batches, Callable[[int], Batches]],
        seed: int = 1,
        num_shards: int = 1,
        shard_id: int = 0,
        num_workers: int = 0,
        epoch: int = 1,
        buffer_size: int = 0,
        skip_remainder_batch: bool = False,
        grouped_shuffling: bool = False,
    ):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} is not in [0, {num_shards})")
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_sampler = batch_sampler
        self._frozen_batches = None if callable(batch_sampler) else [np.asarray(b) for b in batch_sampler]
        self._frozen_epoch = None
        self.seed = seed
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.num_workers = num_workers
        self.buffer_size = buffer_size
        self.skip_remainder_batch = skip_remainder_batch
        self.grouped_shuffling = grouped_shuffling
        self.epoch = max(epoch, 1)
        self.shuffle = True
        self._cur_epoch_itr: Optional[CountingIterator] = None
        self._next_epoch_itr: Optional[CountingIterator] = None

    # -- batches of the current epoch -----------------------------------------------------------

    @property
    def frozen_batches(self) -> List[np.ndarray]:
        """The batches of ``self.epoch`` before shuffling and sharding."""
        if callable(self.batch_sampler) and self._frozen_epoch != self.epoch:
            self._frozen_batches = [np.asarray(b) for b in self.batch_sampler(self.epoch)]
            self._frozen_epoch = self.epoch
        return self._frozen_batches

    def __len__(self) -> int:
        """Steps per epoch for each rank (dummy batches included)."""
        n = math.ceil(len(self.frozen_batches) / self.num_shards)
        return n - 1 if self.skip_remainder_batch and n > 0 else n

    def _shard_batches(self, shuffle: bool, fix_batches_to_gpus: bool) -> List[np.ndarray]:
        batches = list(self.frozen_batches)
        if shuffle and not fix_batches_to_gpus:
            if self.grouped_shuffling:
                groups = shuffle_batches(
                    [batches[i : i + self.num_shards] for i in range(0, len(batches), self.num_shards)],
                    self.seed + self.epoch,
                )
                batches = [b for group in groups for b in group]
            else:
                batches = shuffle_batches(batches, self.seed + self.epoch)
        mine = batches[self.shard_id :: self.num_shards]
        if shuffle and fix_batches_to_gpus:  # each rank keeps the same batches every epoch, in a new order
            mine = shuffle_batches(mine, self.seed + self.epoch + self.shard_id)
        empty = np.zeros(0, dtype=np.int64)
        mine += [empty] * (math.ceil(len(batches) / self.num_shards) - len(mine))
        return mine[: len(self)]

    def _iterator_for_epoch(self, shuffle: bool, fix_batches_to_gpus: bool = False, offset: int = 0):
        batches = self._shard_batches(shuffle, fix_batches_to_gpus)
        if offset > len(batches):
            raise CheckpointError(
                f"cannot resume epoch {self.epoch} at batch {offset}: it has only {len(batches)} batches, so the "
                "data or batching options changed since the checkpoint; relaunch with "
                "checkpoint.reset_dataloader=true (--reset-dataloader) to start the epoch over"
            )
        remaining = [b.tolist() for b in batches[offset:]]
        loader_kwargs = {}
        if self.num_workers > 0:
            loader_kwargs = dict(
                worker_init_fn=_one_thread_worker,
                prefetch_factor=max(2, math.ceil(self.buffer_size / self.num_workers)),
            )
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=remaining,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            **loader_kwargs,
        )
        return CountingIterator(_without_worker_tracebacks(loader), start=offset, total=len(batches))

    # -- fairseq's interface ----------------------------------------------------------------------

    @property
    def next_epoch_idx(self) -> int:
        """The epoch the next ``next_epoch_itr()`` call will iterate."""
        if self._next_epoch_itr is not None:
            return self.epoch
        if self._cur_epoch_itr is not None and self.end_of_epoch():
            return self.epoch + 1
        return self.epoch

    def next_epoch_itr(
        self, shuffle: bool = True, fix_batches_to_gpus: bool = False, set_dataset_epoch: bool = True
    ) -> CountingIterator:
        """The iterator over this rank's batches of the next epoch (or the rest of a restored one)."""
        self.epoch = self.next_epoch_idx
        if set_dataset_epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if self._next_epoch_itr is not None:
            self._cur_epoch_itr, self._next_epoch_itr = self._next_epoch_itr, None
        else:
            self._cur_epoch_itr = self._iterator_for_epoch(shuffle, fix_batches_to_gpus)
        self.shuffle = shuffle
        return self._cur_epoch_itr

    def end_of_epoch(self) -> bool:
        """True when the current epoch's iterator is exhausted."""
        return self._cur_epoch_itr is None or not self._cur_epoch_itr.has_next()

    @property
    def iterations_in_epoch(self) -> int:
        """Batches consumed in the current epoch."""
        if self._cur_epoch_itr is not None:
            return self._cur_epoch_itr.n
        if self._next_epoch_itr is not None:
            return self._next_epoch_itr.n
        return 0

    def state_dict(self) -> Dict[str, Any]:
        """The resume position: ``{"version": 2, "epoch", "iterations_in_epoch", "shuffle"}``."""
        if self._cur_epoch_itr is not None and self.end_of_epoch():
            epoch, done = self.epoch + 1, 0
        else:
            epoch, done = self.epoch, self.iterations_in_epoch
        return {"version": 2, "epoch": epoch, "iterations_in_epoch": done, "shuffle": self.shuffle}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a ``state_dict()``: the next ``next_epoch_itr()`` yields the batches not yet seen."""
        self.epoch = state["epoch"]
        self.shuffle = state.get("shuffle", True)
        offset = state.get("iterations_in_epoch", 0)
        self._cur_epoch_itr = None
        self._next_epoch_itr = None
        if offset > 0:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self._next_epoch_itr = self._iterator_for_epoch(self.shuffle, offset=offset)
