"""``fixed``: one learning rate per epoch, optional warmup and forced annealing (fairseq's FixedLRSchedule)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fairseq_lite.dataclass import II
from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.optim.lr_scheduler import register_lr_scheduler
from fairseq_lite.optim.lr_scheduler.fairseq_lr_scheduler import FairseqLRScheduler


@dataclass
class FixedLRScheduleConfig(FairseqDataclass):
    force_anneal: Optional[int] = field(default=None, metadata={"help": "force annealing at specified epoch"})
    lr_shrink: float = field(default=0.1, metadata={"help": "shrink factor for annealing, lr_new = (lr * lr_shrink)"})
    warmup_updates: int = field(default=0, metadata={"help": "warmup the learning rate linearly for the first N updates"})
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("fixed", dataclass=FixedLRScheduleConfig)
class FixedLRSchedule(FairseqLRScheduler):
    """lr = lr[epoch−1] (the last value repeats); from epoch ``force_anneal`` on, lr[-1]·lr_shrink^(epoch+1−force_anneal);
    during the first ``warmup_updates`` updates the lr is multiplied by (u+1)/warmup_updates."""

    def __init__(self, cfg: FixedLRScheduleConfig, optimizer: Any):
        super().__init__(cfg, optimizer)
        self.lr = float(cfg.lr[0])
        self.warmup_factor = 1.0 / cfg.warmup_updates if cfg.warmup_updates > 0 else 1.0

    def state_dict(self) -> Dict[str, Any]:
        return {"lr": self.lr, "best": self.best}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        if "lr" in state_dict:
            self.lr = state_dict["lr"]

    def lr_for_epoch(self, epoch: int) -> float:
        lrs, anneal = self.cfg.lr, self.cfg.force_anneal
        if anneal is None or epoch < anneal:
            return float(lrs[min(epoch - 1, len(lrs) - 1)])
        return float(lrs[-1]) * self.cfg.lr_shrink ** (epoch + 1 - anneal)

    def step_begin_epoch(self, epoch: int) -> float:
        self.lr = self.lr_for_epoch(epoch)
        self.optimizer.set_lr(self.warmup_factor * self.lr)
        return self.optimizer.get_lr()

    def step_update(self, num_updates: int) -> float:
        warmup = self.cfg.warmup_updates
        if warmup > 0 and num_updates < warmup:
            self.warmup_factor = (num_updates + 1) / float(warmup)
            self.optimizer.set_lr(self.warmup_factor * self.lr)
        else:
            self.optimizer.set_lr(self.lr)
        return self.optimizer.get_lr()
