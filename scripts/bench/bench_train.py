#!/usr/bin/env python
"""Training-side costs: the ``adam`` step on wav2vec 2.0 parameter shapes, and full training updates.

1. Optimizer step. Our fairseq-exact Adam (torch's fused AdamW kernel with fairseq's eps) against the same
   update written as fairseq writes it (a Python loop over parameters), and against torch's own AdamW
   (foreach and fused; a slightly different eps placement, shown for scale). Same parameters and
   gradients; runs alternate after a warm-up; medians and ratios (> 1: ours is faster) are printed.
2. Trainer overhead. One update (forward, backward, normalisation, clipping, step) of a small wav2vec 2.0
   through ``Trainer.train_step`` against a bare PyTorch loop doing the same arithmetic.

    python scripts/bench/bench_train.py --size base --repeats 5 --threads 2
"""

import argparse
import math

import torch

from fairseq_lite.criterions import build_criterion
from fairseq_lite.models import build_model
from fairseq_lite.optim.adam import Adam

from common import ADAM, NO_DROPOUT, PRESETS, alternate


class LoopAdam(torch.optim.Optimizer):
    """fairseq's Adam update as fairseq runs it: one parameter at a time."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = v.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                p.add_(p, alpha=-group["weight_decay"] * group["lr"])
                p.addcdiv_(m, denom, value=-step_size)


def model_cfg(size):
    return {"_name": "wav2vec2", "quantize_targets": True, **NO_DROPOUT, **PRESETS[size]}


def bench_optimizer(size, repeats):
    model = build_model(model_cfg(size))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    candidates = {
        "ours (fused, fairseq update)": Adam(params, **ADAM),
        "fairseq-style loop": LoopAdam(params, **ADAM),
        "torch AdamW foreach": torch.optim.AdamW(params, foreach=True, **ADAM),
        "torch AdamW fused": torch.optim.AdamW(params, fused=True, **ADAM),
    }
    medians = {name: t["wall"] for name, t in alternate({n: o.step for n, o in candidates.items()}, repeats).items()}
    n = sum(p.numel() for p in params)
    print(f"adam step, wav2vec2 {size}: {n / 1e6:.1f}M parameters in {len(params)} tensors")
    ours = medians["ours (fused, fairseq update)"]
    for name, t in medians.items():
        print(f"  {name:32s} {t * 1e3:8.1f} ms   ours faster by x{t / ours:.2f}")


def bench_update(repeats):
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.training.trainer import Trainer

    cfg = finalize_config({
        "common": {"cpu": True}, "optimization": {"lr": [5e-4], "max_update": 1000, "clip_norm": 25.0},
        "task": {"_name": "audio_pretraining", "data": "/nonexistent"},
        "model": model_cfg("small"), "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6, "weight_decay": 0.01},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 10},
    })
    from fairseq_lite.tasks import setup_task

    task = setup_task(cfg.task)
    torch.manual_seed(0)
    sample = {"id": torch.arange(4), "net_input": {"source": torch.randn(4, 32000)}}
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))

    bare_model = task.build_model(cfg.model).train()
    bare_criterion = build_criterion(cfg.criterion, task)
    bare_opt = Adam(bare_model.parameters(), **ADAM)

    def bare_step():
        bare_opt.zero_grad()
        loss, sample_size, _ = bare_criterion(bare_model, sample)
        loss.backward()
        for p in bare_model.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 / sample_size)
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), 25.0)
        bare_opt.step()

    times = alternate({"trainer": lambda: trainer.train_step([sample]), "bare": bare_step}, repeats)
    o, b = times["trainer"]["wall"], times["bare"]["wall"]
    print(f"one update, wav2vec2 small, 4 x 2 s audio: Trainer {o * 1e3:.0f} ms, bare loop {b * 1e3:.0f} ms, "
          f"trainer overhead {100 * (o / b - 1):+.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(PRESETS), default="base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_optimizer(args.size, args.repeats)
    bench_update(args.repeats)


if __name__ == "__main__":
    main()
