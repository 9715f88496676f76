"""fairseq's optimizer interface (``FairseqOptimizer``): one object the trainer and the task talk to.

The trainer never touches a ``torch.optim.Optimizer`` directly: it calls ``backward``, ``multiply_grads``,
``clip_grad_norm``, ``step`` and ``zero_grad`` on this wrapper, so that the precision wrappers
(``FP16Optimizer``, ``AMPOptimizer`` in ``fp16_optimizer.py``) can put loss scaling in the same places.
The class name is what checkpoints record as ``optimizer_name``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, List, Optional

import torch

from fairseq_lite.dataclass.utils import safe_eval


class FairseqOptimizer:
    """Wraps a torch optimizer (``self._optimizer``) with fairseq's method names."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self._optimizer: Optional[torch.optim.Optimizer] = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optimizer

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def params(self) -> Iterable[torch.nn.Parameter]:
        """Every parameter this optimizer updates (for fp16 wrappers: the fp32 master copies)."""
        for group in self.param_groups:
            yield from group["params"]

    # -- learning rate --------------------------------------------------------------------------

    def get_lr(self) -> float:
        return self.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any], optimizer_overrides: Optional[Dict[str, Any]] = None) -> None:
        """Load optimizer state, then apply ``checkpoint.optimizer_overrides`` to every param group."""
        self.optimizer.load_state_dict(state_dict)
        for group in self.param_groups:
            group.update(optimizer_overrides or {})

    # -- the update --------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass; only ``AMPOptimizer`` turns on autocast."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _grads(self) -> List[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def multiply_grads(self, factor: float) -> None:
        """Scale every gradient by ``factor`` (the trainer's world_size / Σsample_size normalisation)."""
        grads = self._grads()
        if grads and factor != 1.0:
            torch._foreach_mul_(grads, float(factor))

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Total L2 norm of the gradients; rescaled to ``max_norm`` when it is larger and ``max_norm > 0``."""
        return clip_grad_norm(self._grads(), max_norm)

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def clip_grad_norm(grads: List[torch.Tensor], max_norm: float) -> torch.Tensor:
    """fairseq's ``clip_grad_norm_``: the norm is always returned; coef = max_norm / (norm + 1e-6), capped at 1."""
    if not grads:
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm)
    return norm


def parse_betas(value: Any) -> tuple:
    """``adam_betas`` as fairseq configs write it: the string ``"(0.9,0.98)"`` or a list/tuple."""
    betas = safe_eval(value)
    return tuple(float(b) for b in betas)


def first_lr(lr: Any) -> float:
    """fairseq's optimizers take ``lr[0]`` of ``optimization.lr`` (a list, one value per epoch)."""
    return float(lr[0]) if isinstance(lr, (list, tuple)) else float(lr)
