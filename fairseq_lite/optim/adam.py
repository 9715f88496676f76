"""``adam``: fairseq's Adam with decoupled weight decay (``fairseq/optim/adam.py``).

fairseq's update differs from ``torch.optim.AdamW`` in where ``eps`` goes: fairseq divides by
``sqrt(v) + eps`` and folds the bias correction of ``v`` into the step size, torch divides by
``sqrt(v) / sqrt(1 - β2^t) + eps``. The two differ noticeably in early steps with the wav2vec configs'
``adam_eps: 1e-06``. Passing ``eps / sqrt(1 - β2^t)`` to torch's kernel makes them identical, so ``Adam``
below runs PyTorch's fused AdamW kernel (CPU and CUDA) on fairseq's formula, one call per group of
parameters with the same step count.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, List

import torch
from torch.optim.adamw import adamw as torch_adamw  # functional AdamW in every torch >= 2.4

from fairseq_lite.dataclass import II
from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.optim import register_optimizer
from fairseq_lite.optim.fairseq_optimizer import FairseqOptimizer, first_lr, parse_betas


@dataclass
class FairseqAdamConfig(FairseqDataclass):
    adam_betas: Any = field(default="(0.9, 0.999)", metadata={"help": "betas for Adam optimizer"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for Adam optimizer"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    use_old_adam: bool = field(default=False, metadata={"help": "accepted for compatibility; the update is the same"})
    fp16_adam_stats: bool = field(
        default=False, metadata={"help": "accepted for compatibility; Adam statistics are always kept in fp32"}
    )
    tpu: bool = II("common.tpu")
    lr: List[float] = II("optimization.lr")


class Adam(torch.optim.Optimizer):
    """Adam with decoupled weight decay on every parameter, fairseq's exact update.

    Per parameter (in fp32 even for half parameters): m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
    p ← p − wd·lr·p; p ← p − lr·sqrt(1−β2^t)/(1−β1^t) · m / (sqrt(v) + eps). Parameters without a
    gradient are skipped. State keys ``step`` (int), ``exp_avg``, ``exp_avg_sq`` as in fairseq.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            # parameters that skipped updates have other step counts: bias corrections are per bucket
            buckets = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] = int(state["step"]) + 1
                buckets[(state["step"], p.device)].append(p)
            for (step, _), params in buckets.items():
                self._update(group, step, params)
        return loss

    def _update(self, group, step: int, params: List[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        master = [p if p.dtype == torch.float32 else p.float() for p in params]
        grads = [p.grad.float() for p in params]
        device = params[0].device
        fused = device.type in ("cpu", "cuda")  # torch's fused kernel wants the step counts beside the params
        # torch divides by sqrt(v)/sqrt(1-β2^t) + eps; with eps/sqrt(1-β2^t) that is fairseq's sqrt(v) + eps
        torch_adamw(
            master,
            grads,
            [self.state[p]["exp_avg"] for p in params],
            [self.state[p]["exp_avg_sq"] for p in params],
            [],
            [torch.tensor(float(step - 1), device=device if fused else "cpu") for _ in params],
            fused=True if fused else None,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"] / math.sqrt(1 - beta2**step),
            maximize=False,
        )
        with torch.no_grad():
            for p, p32 in zip(params, master):
                if p32 is not p:
                    p.copy_(p32)


@register_optimizer("adam", dataclass=FairseqAdamConfig)
class FairseqAdam(FairseqOptimizer):
    """fairseq's ``adam`` optimizer (``optimizer_name`` "FairseqAdam" in checkpoints)."""

    def __init__(self, cfg: FairseqAdamConfig, params):
        super().__init__(cfg)
        self._optimizer = Adam(
            params,
            lr=first_lr(cfg.lr),
            betas=parse_betas(cfg.adam_betas),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
