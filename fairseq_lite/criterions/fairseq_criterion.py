"""Base class of criteria (fairseq's ``FairseqCriterion``)."""

from __future__ import annotations

import inspect
from typing import Any, Dict, List

from torch import nn

from fairseq_lite.errors import ConfigError


class FairseqCriterion(nn.Module):
    """``forward(model, sample)`` returns ``(summed loss, sample_size, logging_output)``.

    ``reduce_metrics`` turns the logging outputs of many micro-batches (and ranks) into the numbers
    that are displayed and compared, e.g. ``loss`` in bits per ``sample_size``.
    """

    def __init__(self, task: Any = None):
        super().__init__()
        self.task = task

    @classmethod
    def build_criterion(cls, cfg: Any, task: Any) -> "FairseqCriterion":
        """Fill the constructor from ``cfg`` by parameter name, as fairseq does (``task``, ``cfg``, fields)."""
        kwargs = {}
        for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if param.name == "task":
                kwargs["task"] = task
            elif param.name == "cfg":
                kwargs["cfg"] = cfg
            elif hasattr(cfg, param.name):
                kwargs[param.name] = getattr(cfg, param.name)
            elif param.default is param.empty:
                raise ConfigError(f"criterion {cls.__name__} needs '{param.name}', which its config does not have")
        return cls(**kwargs)

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False
