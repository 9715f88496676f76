"""Running averages of training statistics over an interval (``train_inner``), an epoch (``train``) or a
validation pass, with the state a checkpoint needs to resume them exactly (fairseq's ``metrics`` meters)."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: fairseq's display priorities (``metrics.log_*(..., priority=)``): the order its progress lines use.
FAIRSEQ_PRIORITY = {"wps": 90, "ups": 100, "wpb": 180, "bsz": 190, "gnorm": 400, "clip": 500, "loss_scale": 700,
                    "train_wall": 800}
DEFAULT_PRIORITY = 10


class MetersGroup:
    """Weighted averages of per-update values plus the updates/tokens per second since the last reset.

    ``add(stats, weights)`` takes the display values of one update; a value's weight defaults to 1
    (fairseq weights ``loss`` by ``sample_size``, everything else by 1). ``ups`` and ``wps`` are rates
    over the wall time the group has been running, which survives a checkpoint round trip.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[str, float] = {}
        self.weights: Dict[str, float] = {}
        self.updates = 0
        self.tokens = 0.0
        self._elapsed_before = 0.0
        self._started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def add(self, stats: Mapping[str, float], weights: Optional[Mapping[str, float]] = None, ntokens: float = 0) -> None:
        weights = weights or {}
        for key, value in stats.items():
            weight = float(weights.get(key, 1.0))
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight
        self.updates += 1
        self.tokens += float(ntokens)

    def averages(self) -> Dict[str, float]:
        """Every averaged value, then ``ups`` and ``wps`` when at least one update was added."""
        out = {k: self.sums[k] / self.weights[k] if self.weights[k] else 0.0 for k in self.sums}
        if self.updates:
            elapsed = max(self.elapsed, 1e-9)
            out["ups"] = self.updates / elapsed
            out["wps"] = self.tokens / elapsed
        return out

    def state_dict(self) -> List[Tuple[int, str, str, Dict[str, Any]]]:
        """fairseq's ``MetersDict.state_dict`` layout, so fairseq resumes our checkpoints with their meters:
        ``(priority, key, meter class name, meter state)`` per value — an ``AverageMeter`` (sum of
        value × weight, count = Σ weight) for each averaged value, ``TimeMeter`` for ``ups`` and ``wps``."""
        meters = [
            (FAIRSEQ_PRIORITY.get(key, DEFAULT_PRIORITY), key, "AverageMeter",
             {"val": self.sums[key] / self.weights[key] if self.weights[key] else 0.0, "sum": self.sums[key],
              "count": self.weights[key], "round": None})
            for key in self.sums
        ]
        meters.append((FAIRSEQ_PRIORITY["ups"], "ups", "TimeMeter",
                       {"init": self.elapsed, "n": self.updates, "round": 2}))
        meters.append((FAIRSEQ_PRIORITY["wps"], "wps", "TimeMeter",
                       {"init": self.elapsed, "n": self.tokens, "round": 1}))
        return meters

    def load_state_dict(self, state: Iterable[Sequence[Any]]) -> None:
        """Read fairseq's meter list (ours or a genuine fairseq checkpoint's); meter kinds fairseq_lite does
        not keep (stopwatches, sums) are left out."""
        self.reset()
        for _, key, meter_class, meter_state in state:
            if meter_class == "AverageMeter":
                self.sums[key] = float(meter_state.get("sum", 0.0))
                self.weights[key] = float(meter_state.get("count", 0.0))
            elif meter_class == "TimeMeter" and key in ("ups", "wps"):
                self._elapsed_before = float(meter_state.get("init", 0.0))
                if key == "ups":
                    self.updates = int(meter_state.get("n", 0))
                else:
                    self.tokens = float(meter_state.get("n", 0.0))
        self._started = time.perf_counter()
