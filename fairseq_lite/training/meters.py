"""Running averages of training statistics over an interval (``train_inner``), an epoch (``train``) or a
validation pass, with the state a checkpoint needs to resume them exactly (fairseq's ``metrics`` meters)."""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional


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

    def state_dict(self) -> Dict[str, Any]:
        return {
            "sums": dict(self.sums),
            "weights": dict(self.weights),
            "updates": self.updates,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = dict(state["sums"])
        self.weights = dict(state["weights"])
        self.updates = int(state["updates"])
        self.tokens = float(state["tokens"])
        self._elapsed_before = float(state["elapsed"])
        self._started = time.perf_counter()
