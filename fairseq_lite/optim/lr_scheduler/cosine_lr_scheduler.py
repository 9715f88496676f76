"""``cosine``: linear warmup, then cosine annealing with optional restarts (fairseq's CosineLRSchedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

from fairseq_lite.dataclass import II
from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.errors import ConfigError
from fairseq_lite.optim.lr_scheduler import register_lr_scheduler
from fairseq_lite.optim.lr_scheduler.fairseq_lr_scheduler import FairseqLRScheduler, single_lr


@dataclass
class CosineLRScheduleConfig(FairseqDataclass):
    warmup_updates: int = field(default=0, metadata={"help": "warmup the learning rate linearly for the first N updates"})
    warmup_init_lr: float = field(default=-1, metadata={"help": "initial learning rate during warmup phase; default is cfg.lr"})
    lr: List[float] = field(default=II("optimization.lr"), metadata={"help": "max learning rate, must be more than cfg.min_lr"})
    min_lr: float = field(default=0.0, metadata={"help": "min learning rate"})
    t_mult: float = field(default=1.0, metadata={"help": "factor to grow the length of each period"})
    lr_period_updates: float = field(default=-1, metadata={"help": "initial number of updates per period"})
    lr_shrink: float = field(default=0.1, metadata={"help": "shrink factor for annealing"})
    max_update: int = II("optimization.max_update")


@register_lr_scheduler("cosine", dataclass=CosineLRScheduleConfig)
class CosineLRSchedule(FairseqLRScheduler):
    """Warmup from ``warmup_init_lr`` (default ``min_lr``) to lr over W updates, then in period i of length
    t_i = period·t_mult^i: lr_i = min·s^i + ½(max·s^i − min·s^i)(1 + cos(π·t_cur/t_i)) with s = lr_shrink."""

    def __init__(self, cfg: CosineLRScheduleConfig, optimizer: Any):
        super().__init__(cfg, optimizer)
        self.max_lr = single_lr(cfg, "cosine")
        if self.max_lr <= cfg.min_lr:
            raise ConfigError(f"lr_scheduler cosine needs lr ({self.max_lr}) > lr_scheduler.min_lr ({cfg.min_lr})")
        self.warmup_init_lr = cfg.warmup_init_lr if cfg.warmup_init_lr >= 0 else cfg.min_lr
        self.period = cfg.lr_period_updates
        if self.period <= 0:
            if cfg.max_update <= 0:
                raise ConfigError("lr_scheduler cosine needs lr_period_updates > 0 or optimization.max_update > 0")
            self.period = cfg.max_update - cfg.warmup_updates
        self.lr_step = (self.max_lr - self.warmup_init_lr) / cfg.warmup_updates if cfg.warmup_updates > 0 else 1.0
        self.optimizer.set_lr(self.warmup_init_lr)

    def lr_at(self, num_updates: int) -> float:
        cfg = self.cfg
        if num_updates < cfg.warmup_updates:
            return self.warmup_init_lr + num_updates * self.lr_step
        current = num_updates - cfg.warmup_updates
        if cfg.t_mult != 1:
            i = math.floor(math.log(1 - current / self.period * (1 - cfg.t_mult), cfg.t_mult))
            t_i = cfg.t_mult**i * self.period
            t_cur = current - (1 - cfg.t_mult**i) / (1 - cfg.t_mult) * self.period
        else:
            i = math.floor(current / self.period)
            t_i = self.period
            t_cur = current - self.period * i
        shrink = cfg.lr_shrink**i
        low, high = cfg.min_lr * shrink, self.max_lr * shrink
        return low + 0.5 * (high - low) * (1 + math.cos(math.pi * t_cur / t_i))

    def step_update(self, num_updates: int) -> float:
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()
