"""Base class of LR schedulers (fairseq's ``FairseqLRScheduler``).

The trainer calls ``step_begin_epoch(epoch)`` at the start of every epoch, ``step_update(num_updates)``
after every update (and once with 0 right after construction) and ``step(epoch, val_loss)`` at the end of
an epoch. Each scheduler sets the optimizer's lr itself and returns it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from fairseq_lite.errors import ConfigError


class FairseqLRScheduler:
    def __init__(self, cfg: Any, optimizer: Any):
        self.cfg = cfg
        self.optimizer = optimizer
        self.best: Optional[float] = None

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def step_begin_epoch(self, epoch: int) -> float:
        return self.optimizer.get_lr()

    def step(self, epoch: int, val_loss: Optional[float] = None) -> float:
        """End of an epoch: remember the best (lowest) validation loss."""
        if val_loss is not None:
            self.best = val_loss if self.best is None else min(self.best, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates: int) -> float:
        return self.optimizer.get_lr()


def single_lr(cfg: Any, scheduler: str) -> float:
    """The one learning rate that schedules driven by updates accept (fairseq asserts the same)."""
    lrs = list(cfg.lr) if isinstance(cfg.lr, (list, tuple)) else [cfg.lr]
    if len(lrs) != 1:
        raise ConfigError(
            f"lr_scheduler {scheduler} takes a single optimization.lr, got {lrs}: "
            "use lr_scheduler=fixed for one learning rate per epoch"
        )
    return float(lrs[0])
