"""Base class of tasks (fairseq's ``FairseqTask``): datasets, model/criterion building, one train/valid step."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from fairseq_lite.errors import ConfigError


class FairseqTask:
    """A task owns the datasets of a run and knows how to build its model and criterion.

    ``state_dict()`` is saved in checkpoints under ``task_state`` (fairseq stores the target
    dictionary there) and given back through ``load_state_dict`` on restore.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.datasets: Dict[str, Any] = {}

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
        """Forward and backward one micro-batch; returns (loss, sample_size, logging_output)."""
        model.train()
        model.set_num_updates(update_num)
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
