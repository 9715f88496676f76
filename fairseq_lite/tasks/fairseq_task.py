"""Base class of tasks (fairseq's ``FairseqTask``): datasets, model/criterion building, one train/valid step."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from fairseq_lite.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class FairseqTask:
    """A task owns the datasets of a run and knows how to build its model and criterion.

    ``state_dict()`` is saved in checkpoints under ``task_state`` (fairseq stores the target
    dictionary there) and given back through ``load_state_dict`` on restore.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.datasets: Dict[str, Any] = {}
        self.dataset_to_epoch_iter: Dict[Any, Any] = {}

    @classmethod
    def setup_task(cls, cfg: Any, **kwargs: Any) -> "FairseqTask":
        return cls(cfg, **kwargs)

    # -- data --------------------------------------------------------------------------------

    def load_dataset(self, split: str, combine: bool = False, epoch: int = 1, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not load datasets")

    def dataset(self, split: str) -> Any:
        if split not in self.datasets:
            loaded = ", ".join(sorted(self.datasets)) or "none"
            raise ConfigError(f"dataset split '{split}' is not loaded (loaded: {loaded})")
        return self.datasets[split]

    def get_batch_iterator(
        self, dataset: Any, max_tokens: Optional[int] = None, max_sentences: Optional[int] = None,
        max_positions: Optional[Any] = None, ignore_invalid_inputs: bool = False,
        required_batch_size_multiple: int = 1, seed: int = 1, num_shards: int = 1, shard_id: int = 0,
        num_workers: int = 0, epoch: int = 1, data_buffer_size: int = 0, disable_iterator_cache: bool = False,
        skip_remainder_batch: bool = False, grouped_shuffling: bool = False, update_epoch_batch_itr: bool = False,
    ):
        """An ``EpochBatchIterator`` over ``dataset`` batched by length (fairseq's ``get_batch_iterator``).

        Indices come from ``dataset.ordered_indices()`` under numpy seeded with ``seed + epoch``, are
        filtered by ``max_positions`` (``ignore_invalid_inputs`` drops offenders with a warning instead
        of an error) and packed so that batch size × longest example ≤ ``max_tokens``. With the task
        option ``rebuild_batches`` the batches are rebuilt every epoch. The iterator is cached per
        dataset unless ``disable_iterator_cache`` or ``update_epoch_batch_itr``. Ranks that run out of
        batches get empty dummy batches; see ``EpochBatchIterator``.
        """
        from fairseq_lite.data.iterators import EpochBatchIterator

        reuse = not disable_iterator_cache and not update_epoch_batch_itr
        if reuse and dataset in self.dataset_to_epoch_iter:
            return self.dataset_to_epoch_iter[dataset]

        make = partial(self._make_batches, dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                       max_positions=max_positions, ignore_invalid_inputs=ignore_invalid_inputs,
                       required_batch_size_multiple=required_batch_size_multiple, seed=seed)
        rebuild = getattr(self.cfg, "rebuild_batches", False)
        epoch_iter = EpochBatchIterator(
            dataset=dataset,
            collate_fn=dataset.collater,
            batch_sampler=make if rebuild else make(epoch),
            seed=seed,
            num_shards=num_shards,
            shard_id=shard_id,
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            skip_remainder_batch=skip_remainder_batch,
            grouped_shuffling=grouped_shuffling,
        )
        if reuse:
            self.dataset_to_epoch_iter[dataset] = epoch_iter
        return epoch_iter

    @staticmethod
    def _make_batches(
        dataset: Any,
        epoch: int,
        *,
        max_tokens: Optional[int],
        max_sentences: Optional[int],
        max_positions: Optional[Any],
        ignore_invalid_inputs: bool,
        required_batch_size_multiple: int,
        seed: int,
    ) -> List[np.ndarray]:
        from fairseq_lite.data.batching import batch_by_size
        from fairseq_lite.data.data_utils import numpy_seed

        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        with numpy_seed(seed + epoch):
            indices = np.asarray(dataset.ordered_indices(), dtype=np.int64)
        if max_positions is not None and hasattr(dataset, "filter_indices_by_size"):
            indices, ignored = dataset.filter_indices_by_size(indices, max_positions)
            if len(ignored) and not ignore_invalid_inputs:
                raise DataError(
                    f"{len(ignored)} examples (e.g. {list(ignored[:5])}) are longer than max_positions="
                    f"{max_positions}: set dataset.skip_invalid_size_inputs_valid_test=true to skip them"
                )
            if len(ignored):
                logger.warning("skipped %d examples longer than max_positions=%s", len(ignored), max_positions)
        if hasattr(dataset, "num_tokens_vec"):
            num_tokens = dataset.num_tokens_vec(indices)
        else:
            num_tokens = np.fromiter((dataset.num_tokens(i) for i in indices), dtype=np.int64, count=len(indices))
        if ignore_invalid_inputs and max_tokens:
            keep = num_tokens <= max_tokens
            if not keep.all():
                logger.warning("skipped %d examples longer than max_tokens=%d", int((~keep).sum()), max_tokens)
                indices, num_tokens = indices[keep], num_tokens[keep]
        return batch_by_size(indices, num_tokens, max_tokens, max_sentences, required_batch_size_multiple)

    @property
    def source_dictionary(self) -> Optional[Any]:
        return None

    @property
    def target_dictionary(self) -> Optional[Any]:
        return None

    def max_positions(self) -> Optional[Any]:
        return None

    # -- components --------------------------------------------------------------------------

    def build_model(self, cfg: Any, from_checkpoint: bool = False) -> torch.nn.Module:
        from fairseq_lite.models import build_model

        return build_model(cfg, self, from_checkpoint=from_checkpoint)

    def build_criterion(self, cfg: Any, from_checkpoint: bool = False) -> torch.nn.Module:
        from fairseq_lite.criterions import build_criterion

        return build_criterion(cfg, self, from_checkpoint=from_checkpoint)

    # -- steps (fairseq semantics: the criterion returns a summed loss) ------------------------

    def train_step(self, sample, model, criterion, optimizer, update_num: int, ignore_grad: bool = False):
        """Forward and backward one micro-batch; returns (loss, sample_size, logging_output).

        The forward pass runs under ``optimizer.autocast()`` (torch autocast for ``common.amp``, nothing
        otherwise) and the backward through ``optimizer.backward`` (which applies fp16 loss scaling).
        """
        model.train()
        model.set_num_updates(update_num)
        with optimizer.autocast():
            loss, sample_size, logging_output = criterion(model, sample)
        if ignore_grad:
            loss = loss * 0
        optimizer.backward(loss)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        model.eval()
        with torch.no_grad():
            return criterion(model, sample)

    def reduce_metrics(self, logging_outputs, criterion) -> Dict[str, float]:
        return criterion.reduce_metrics(logging_outputs)

    # -- checkpoint state --------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
