"""``polynomial_decay``: linear warmup, then polynomial decay to ``end_learning_rate`` (wav2vec 2.0 pretraining)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from fairseq_lite.dataclass import II
from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.errors import ConfigError
from fairseq_lite.optim.lr_scheduler import register_lr_scheduler
from fairseq_lite.optim.lr_scheduler.fairseq_lr_scheduler import FairseqLRScheduler, single_lr


@dataclass
class PolynomialDecayLRScheduleConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warmup the learning rate linearly for the first N updates"})
    force_anneal: Optional[int] = field(default=None, metadata={"help": "force annealing at specified epoch"})
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate to decay to"})
    power: float = field(default=1.0, metadata={"help": "decay exponent"})
    total_num_update: float = II("optimization.max_update")
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("polynomial_decay", dataclass=PolynomialDecayLRScheduleConfig)
class PolynomialDecayLRSchedule(FairseqLRScheduler):
    """u ≤ W: lr·u/W; u ≥ total: end; else (lr − end)·(1 − (u−W)/(total−W))^power + end."""

    def __init__(self, cfg: PolynomialDecayLRScheduleConfig, optimizer: Any):
        super().__init__(cfg, optimizer)
        if cfg.total_num_update <= 0:
            raise ConfigError(
                "lr_scheduler polynomial_decay needs lr_scheduler.total_num_update > 0 "
                "(it defaults to optimization.max_update: set that)"
            )
        self.lr = single_lr(cfg, "polynomial_decay")
        self.optimizer.set_lr(self.lr_at(0))

    def lr_at(self, num_updates: int) -> float:
        cfg = self.cfg
        warmup, total, end = cfg.warmup_updates, cfg.total_num_update, cfg.end_learning_rate
        if warmup > 0 and num_updates <= warmup:
            return self.lr * num_updates / float(warmup)
        if num_updates >= total:
            return end
        remaining = 1 - (num_updates - warmup) / float(total - warmup)
        return (self.lr - end) * remaining**cfg.power + end

    def step_update(self, num_updates: int) -> float:
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()
