"""``tri_stage``: warmup, hold, exponential decay, then constant (wav2vec 2.0 fine-tuning)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from fairseq_lite.dataclass import II
from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.dataclass.utils import parse_list
from fairseq_lite.errors import ConfigError
from fairseq_lite.optim.lr_scheduler import register_lr_scheduler
from fairseq_lite.optim.lr_scheduler.fairseq_lr_scheduler import FairseqLRScheduler, single_lr


@dataclass
class TriStageLRScheduleConfig(FairseqDataclass):
    warmup_steps: int = field(default=0, metadata={"help": "warmup the learning rate linearly for the first N updates"})
    hold_steps: int = field(default=0, metadata={"help": "steps in hold stage"})
    decay_steps: int = field(default=0, metadata={"help": "steps in decay stages"})
    phase_ratio: Optional[Any] = field(
        default=None,
        metadata={"help": "if set, automatically sets warmup/hold/decay steps to the ratio specified here from max_updates; must sum to 1"},
    )
    init_lr_scale: float = field(default=0.01, metadata={"help": "initial learning rate scale during warmup phase"})
    final_lr_scale: float = field(default=0.01, metadata={"help": "final learning rate scale"})
    max_update: float = II("optimization.max_update")
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("tri_stage", dataclass=TriStageLRScheduleConfig)
class TriStageLRSchedule(FairseqLRScheduler):
    """u < W: init + (peak−init)·u/W; then ``hold_steps`` at peak; then peak·exp(−ln(1/final_scale)·t/D)
    for t ≤ D; then final_scale·peak. With ``phase_ratio`` (summing to 1) W, H, D = int(max_update·ratio)."""

    def __init__(self, cfg: TriStageLRScheduleConfig, optimizer: Any):
        super().__init__(cfg, optimizer)
        self.peak_lr = single_lr(cfg, "tri_stage")
        self.init_lr = cfg.init_lr_scale * self.peak_lr
        self.final_lr = cfg.final_lr_scale * self.peak_lr
        self.warmup_steps, self.hold_steps, self.decay_steps = self._stage_lengths(cfg)
        self.warmup_rate = (self.peak_lr - self.init_lr) / self.warmup_steps if self.warmup_steps else 0.0
        self.decay_factor = -math.log(cfg.final_lr_scale) / self.decay_steps if self.decay_steps else 0.0
        self.optimizer.set_lr(self.init_lr)

    @staticmethod
    def _stage_lengths(cfg: TriStageLRScheduleConfig) -> Tuple[int, int, int]:
        if cfg.phase_ratio is None:
            return cfg.warmup_steps, cfg.hold_steps, cfg.decay_steps
        ratios = parse_list(cfg.phase_ratio, float)
        if len(ratios) != 3 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ConfigError(f"lr_scheduler.phase_ratio must be three numbers summing to 1, got {ratios}")
        if cfg.max_update <= 0:
            raise ConfigError("lr_scheduler tri_stage with phase_ratio needs optimization.max_update > 0")
        return tuple(int(cfg.max_update * r) for r in ratios)

    def lr_at(self, num_updates: int) -> float:
        offset = num_updates
        if offset < self.warmup_steps:
            return self.init_lr + self.warmup_rate * offset
        offset -= self.warmup_steps
        if offset < self.hold_steps:
            return self.peak_lr
        offset -= self.hold_steps
        if offset <= self.decay_steps:
            return self.peak_lr * math.exp(-self.decay_factor * offset)
        return self.final_lr

    def step_update(self, num_updates: int) -> float:
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()
