"""Precision wrappers around a fairseq optimizer (``fairseq/optim/fp16_optimizer.py``, ``amp_optimizer.py``).

- ``FP16Optimizer``: the model is half (``common.fp16``) or bfloat16 (``common.bf16``); the wrapped
  optimizer updates fp32 master copies that are copied back after each step. fp16 uses a dynamic loss
  scaler, bf16 none.
- ``MemoryEfficientFP16Optimizer``: the same without master copies (``memory_efficient_fp16/bf16``):
  gradients are unscaled in place and ``Adam`` does its arithmetic in fp32 per step.
- ``AMPOptimizer``: fp32 model, forward under ``torch.autocast`` and ``torch.amp.GradScaler`` (``common.amp``).

An overflowing gradient raises ``OverflowError`` from ``clip_grad_norm``: the trainer then skips the update
without advancing ``num_updates``, as fairseq does. The class names are the ``optimizer_name`` strings
fairseq writes into ``optimizer_history``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Dict, List, Optional

import torch

from fairseq_lite.optim import OPTIMIZER_REGISTRY
from fairseq_lite.optim.fairseq_optimizer import FairseqOptimizer, clip_grad_norm

logger = logging.getLogger(__name__)


def default_scale_window(cfg: Any) -> int:
    """fairseq's default loss-scale window: 2^14 clean updates divided by world size × update_freq[0]."""
    world = cfg.distributed_training.distributed_world_size
    return max(1, int(2**14 / world / cfg.optimization.update_freq[0]))


class DynamicLossScaler:
    """fairseq's dynamic loss scaler: ÷2 on overflow, ×2 after ``scale_window`` updates without one.

    ``tolerance`` is the fraction of overflowing updates since the last rescale that is tolerated before
    the scale is lowered; reaching ``min_loss_scale`` raises FloatingPointError (training cannot go on).
    """

    def __init__(
        self,
        init_scale: float = 2.0**15,
        scale_factor: float = 2.0,
        scale_window: int = 2000,
        tolerance: float = 0.0,
        threshold: Optional[float] = None,
        min_loss_scale: float = 1e-4,
    ):
        self.loss_scale = float(init_scale)
        self.scale_factor = scale_factor
        self.scale_window = scale_window
        self.tolerance = tolerance
        self.threshold = threshold
        self.min_loss_scale = min_loss_scale
        self._iter = 0
        self._last_overflow_iter = -1
        self._last_rescale_iter = -1
        self._overflows_since_rescale = 0

    def update(self) -> None:
        """Called after every clean update."""
        if (self._iter - self._last_overflow_iter) % self.scale_window == 0:
            self.loss_scale *= self.scale_factor
            self._last_rescale_iter = self._iter
        self._iter += 1

    def check_overflow(self, grad_norm: float) -> None:
        """Lower the scale and raise OverflowError when ``grad_norm`` is inf or NaN."""
        if math.isfinite(grad_norm):
            return
        previous = self.loss_scale
        self._last_overflow_iter = self._iter
        self._overflows_since_rescale += 1
        since_rescale = max(1, self._iter - self._last_rescale_iter)
        if self._overflows_since_rescale / since_rescale >= self.tolerance:
            self.loss_scale /= self.scale_factor
            if self.threshold is not None:
                self.loss_scale = max(self.loss_scale, self.threshold)
            self._last_rescale_iter = self._iter
            self._overflows_since_rescale = 0
        if self.loss_scale <= self.min_loss_scale:
            self.loss_scale = previous
            raise FloatingPointError(
                f"minimum loss scale reached ({self.min_loss_scale}): the loss is probably exploding; "
                "try a lower learning rate, common.bf16=true or fp32 training"
            )
        self._iter += 1
        raise OverflowError(f"gradient overflow: loss scale lowered to {self.loss_scale}")

    def state_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        vars(self).update(state)


class FP16Optimizer(FairseqOptimizer):
    """Half/bfloat16 model, fp32 master parameters updated by the wrapped optimizer."""

    keeps_fp32_master = True

    def __init__(self, cfg: Any, params: List[torch.nn.Parameter]):
        super().__init__(cfg.optimizer)
        self.model_params = [p for p in params if p.requires_grad]
        if self.keeps_fp32_master:
            self.master_params = [torch.nn.Parameter(p.detach().float().clone()) for p in self.model_params]
        else:
            self.master_params = self.model_params
        self.wrapped = OPTIMIZER_REGISTRY.build(cfg.optimizer, self.master_params)
        self._optimizer = self.wrapped.optimizer
        common = cfg.common
        if common.fp16 or common.memory_efficient_fp16:
            self.scaler: Optional[DynamicLossScaler] = DynamicLossScaler(
                init_scale=common.fp16_init_scale,
                scale_window=common.fp16_scale_window or default_scale_window(cfg),
                tolerance=common.fp16_scale_tolerance,
                threshold=common.threshold_loss_scale,
                min_loss_scale=common.min_loss_scale,
            )
        else:  # bf16 has fp32's range: no loss scaling
            self.scaler = None
        self._grads_ready = False

    @property
    def loss_scale(self) -> float:
        return self.scaler.loss_scale if self.scaler is not None else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.loss_scale).backward()
        self._grads_ready = False

    def _sync_grads(self) -> None:
        """Move the (scaled, half) model gradients into fp32 master gradients without the loss scale."""
        if self._grads_ready:
            return
        for p, master in zip(self.model_params, self.master_params):
            if p.grad is None:
                continue
            if master is not p:
                master.grad = p.grad.float()
        grads = self._grads()
        if grads and self.loss_scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self.loss_scale)
        self._grads_ready = True

    def multiply_grads(self, factor: float) -> None:
        self._sync_grads()
        super().multiply_grads(factor)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        self._sync_grads()
        norm = clip_grad_norm(self._grads(), max_norm)
        if self.scaler is not None:
            self.scaler.check_overflow(float(norm))
        return norm

    def step(self) -> None:
        self._sync_grads()
        self.wrapped.step()
        if self.keeps_fp32_master:
            with torch.no_grad():
                for p, master in zip(self.model_params, self.master_params):
                    p.copy_(master)
        if self.scaler is not None:
            self.scaler.update()

    def zero_grad(self) -> None:
        for p in self.model_params:
            p.grad = None
        for p in self.master_params:
            p.grad = None
        self._grads_ready = False

    def state_dict(self) -> Dict[str, Any]:
        state = self.wrapped.state_dict()
        if self.scaler is not None:
            state["loss_scale"] = self.scaler.loss_scale
            state["loss_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any], optimizer_overrides: Optional[Dict[str, Any]] = None) -> None:
        state_dict = dict(state_dict)
        scale = state_dict.pop("loss_scale", None)
        scaler_state = state_dict.pop("loss_scaler", None)
        if self.scaler is not None and scaler_state is not None:
            self.scaler.load_state_dict(scaler_state)
        elif self.scaler is not None and scale is not None:  # a fairseq-written checkpoint
            self.scaler.loss_scale = float(scale)
        self.wrapped.load_state_dict(state_dict, optimizer_overrides)


class MemoryEfficientFP16Optimizer(FP16Optimizer):
    """``memory_efficient_fp16`` / ``memory_efficient_bf16``: no fp32 master copy of the parameters."""

    keeps_fp32_master = False


class AMPOptimizer(FairseqOptimizer):
    """``common.amp``: fp32 parameters, autocast forward, ``torch.amp.GradScaler`` loss scaling."""

    def __init__(self, cfg: Any, params: List[torch.nn.Parameter], device: torch.device):
        super().__init__(cfg.optimizer)
        self.wrapped = OPTIMIZER_REGISTRY.build(cfg.optimizer, params)
        self._optimizer = self.wrapped.optimizer
        self.device_type = device.type
        common = cfg.common
        self.scaler = torch.amp.GradScaler(
            self.device_type,
            init_scale=float(common.amp_init_scale),
            growth_interval=common.amp_scale_window or default_scale_window(cfg),
        )
        self._unscaled = False

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale())

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        return torch.autocast(self.device_type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        self._unscaled = False

    def _unscale(self) -> None:
        if not self._unscaled:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True

    def multiply_grads(self, factor: float) -> None:
        self._unscale()
        super().multiply_grads(factor)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        self._unscale()
        norm = clip_grad_norm(self._grads(), max_norm)
        if not torch.isfinite(norm):
            self.scaler.update()  # the scaler saw the inf while unscaling: this lowers the scale
            self._unscaled = False
            raise OverflowError(f"AMP gradient overflow: loss scale lowered to {self.loss_scale}")
        return norm

    def step(self) -> None:
        self._unscale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._unscaled = False

    def zero_grad(self) -> None:
        super().zero_grad()
        self._unscaled = False

    def state_dict(self) -> Dict[str, Any]:
        state = self.wrapped.state_dict()
        state["loss_scale"] = self.loss_scale
        state["amp_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any], optimizer_overrides: Optional[Dict[str, Any]] = None) -> None:
        state_dict = dict(state_dict)
        state_dict.pop("loss_scale", None)
        scaler_state = state_dict.pop("amp_scaler", None)
        if scaler_state is not None:
            self.scaler.load_state_dict(scaler_state)
        self.wrapped.load_state_dict(state_dict, optimizer_overrides)


def build_training_optimizer(cfg: Any, params: List[torch.nn.Parameter], device: torch.device) -> FairseqOptimizer:
    """The optimizer for ``cfg``'s precision: plain, FP16Optimizer (fp16/bf16), the memory-efficient one, or AMP."""
    common = cfg.common
    if common.memory_efficient_fp16 or common.memory_efficient_bf16:
        return MemoryEfficientFP16Optimizer(cfg, params)
    if common.fp16 or common.bf16:
        return FP16Optimizer(cfg, params)
    if common.amp:
        return AMPOptimizer(cfg, params, device)
    return OPTIMIZER_REGISTRY.build(cfg.optimizer, params)
