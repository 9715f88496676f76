"""The adam optimizer and the LR schedules against fairseq's formulas (reference §6)."""

import math

import pytest
import torch

from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.optim import OPTIMIZER_REGISTRY
from fairseq_lite.optim.adam import FairseqAdamConfig
from fairseq_lite.optim.fp16_optimizer import DynamicLossScaler
from fairseq_lite.optim.lr_scheduler import LR_SCHEDULER_REGISTRY


def reference_adam(p, grads, lr, betas, eps, wd):
    """fairseq's Adam.step, written out per parameter (reference §6.1)."""
    p = p.clone().double()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        denom = v.sqrt() + eps
        step_size = lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
        p = p - wd * lr * p
        p = p - step_size * m / denom
    return p


def test_adam_matches_fairseq_update_with_string_betas_and_decoupled_weight_decay():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(3))
    start = [w.detach().clone(), b.detach().clone()]
    cfg = FairseqAdamConfig(_name="adam", adam_betas="(0.9,0.98)", adam_eps=1e-6, weight_decay=0.01, lr=[0.05], tpu=False)
    opt = OPTIMIZER_REGISTRY.build(cfg, [w, b])
    assert type(opt).__name__ == "FairseqAdam"
    grads = [[torch.randn(5, 3), torch.randn(3)] for _ in range(4)]
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
    for param, init, i in ((w, start[0], 0), (b, start[1], 1)):
        expected = reference_adam(init, [g[i] for g in grads], 0.05, (0.9, 0.98), 1e-6, 0.01)
        torch.testing.assert_close(param.detach().double(), expected, rtol=1e-5, atol=1e-6)
    state = opt.state_dict()["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"] == 4


def test_adam_differs_from_torch_adamw_where_fairseq_does():
    """Early steps with eps=1e-6: torch's AdamW puts eps elsewhere, so it is not a drop-in."""
    g = torch.full((4,), 1e-5)
    ours = torch.nn.Parameter(torch.zeros(4))
    theirs = torch.nn.Parameter(torch.zeros(4))
    cfg = FairseqAdamConfig(_name="adam", adam_betas=(0.9, 0.98), adam_eps=1e-6, lr=[1.0], tpu=False)
    opt = OPTIMIZER_REGISTRY.build(cfg, [ours])
    torch_opt = torch.optim.AdamW([theirs], lr=1.0, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    ours.grad, theirs.grad = g.clone(), g.clone()
    opt.step()
    torch_opt.step()
    expected = reference_adam(torch.zeros(4), [g], 1.0, (0.9, 0.98), 1e-6, 0.0)
    torch.testing.assert_close(ours.detach().double(), expected)
    assert not torch.allclose(theirs.detach(), ours.detach(), rtol=1e-3)


def test_adam_updates_half_parameters_in_fp32_and_skips_params_without_grad():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    frozen = torch.nn.Parameter(torch.ones(2))
    opt = OPTIMIZER_REGISTRY.build(FairseqAdamConfig(_name="adam", lr=[0.1], tpu=False), [p, frozen])
    p.grad = torch.ones(3, dtype=torch.float16)
    opt.step()
    assert p.dtype == torch.float16 and opt.optimizer.state[p]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(p.float(), torch.full((3,), 0.9), atol=1e-3, rtol=0)
    assert frozen not in opt.optimizer.state and torch.equal(frozen.detach(), torch.ones(2))


def _scheduler(name, max_update=1000, lr=(1e-3,), **fields):
    cfg = finalize_config({
        "optimization": {"lr": list(lr), "max_update": max_update},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": name, **fields},
    })
    opt = OPTIMIZER_REGISTRY.build(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    return LR_SCHEDULER_REGISTRY.build(cfg.lr_scheduler, opt), opt


def _lr_after(sched, opt, u):
    sched.step_update(u)
    return opt.get_lr()


def test_polynomial_decay_closed_form():
    sched, opt = _scheduler("polynomial_decay", max_update=400, lr=(5e-4,), warmup_updates=32, power=2.0,
                            end_learning_rate=1e-5)
    assert opt.get_lr() == 0.0
    assert _lr_after(sched, opt, 16) == pytest.approx(5e-4 * 16 / 32)
    assert _lr_after(sched, opt, 32) == pytest.approx(5e-4)
    u = 200
    expected = (5e-4 - 1e-5) * (1 - (u - 32) / (400 - 32)) ** 2 + 1e-5
    assert _lr_after(sched, opt, u) == pytest.approx(expected)
    assert _lr_after(sched, opt, 400) == pytest.approx(1e-5)
    assert _lr_after(sched, opt, 500) == pytest.approx(1e-5)


def test_tri_stage_with_phase_ratio_closed_form():
    sched, opt = _scheduler("tri_stage", max_update=13000, lr=(5e-5,), phase_ratio=[0.1, 0.4, 0.5],
                            final_lr_scale=0.05)
    assert (sched.warmup_steps, sched.hold_steps, sched.decay_steps) == (1300, 5200, 6500)
    init = 0.01 * 5e-5
    assert opt.get_lr() == pytest.approx(init)
    assert _lr_after(sched, opt, 650) == pytest.approx(init + (5e-5 - init) * 650 / 1300)
    assert _lr_after(sched, opt, 1300 + 100) == pytest.approx(5e-5)
    t = 3000
    expected = 5e-5 * math.exp(-math.log(1 / 0.05) * t / 6500)
    assert _lr_after(sched, opt, 6500 + t) == pytest.approx(expected)
    assert _lr_after(sched, opt, 13001) == pytest.approx(0.05 * 5e-5)


def test_cosine_with_warmup_and_restarts_closed_form():
    sched, opt = _scheduler("cosine", lr=(1.0,), warmup_updates=10, warmup_init_lr=0.0, min_lr=0.1,
                            lr_period_updates=100, t_mult=2.0, lr_shrink=0.5)
    assert _lr_after(sched, opt, 5) == pytest.approx(0.5)
    assert _lr_after(sched, opt, 10 + 50) == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 0.5)))
    # second period: starts at 100 updates after warmup, lasts 200, max and min shrunk by 0.5
    assert _lr_after(sched, opt, 10 + 100 + 50) == pytest.approx(
        0.05 + 0.5 * (0.5 - 0.05) * (1 + math.cos(math.pi * 50 / 200)))


def test_fixed_warmup_and_force_anneal():
    sched, opt = _scheduler("fixed", lr=(0.1, 0.05), warmup_updates=4, force_anneal=3, lr_shrink=0.5)
    sched.step_begin_epoch(1)
    assert _lr_after(sched, opt, 0) == pytest.approx(0.1 * 1 / 4)
    assert _lr_after(sched, opt, 2) == pytest.approx(0.1 * 3 / 4)
    assert _lr_after(sched, opt, 10) == pytest.approx(0.1)
    sched.step_begin_epoch(2)
    assert _lr_after(sched, opt, 11) == pytest.approx(0.05)
    sched.step_begin_epoch(4)
    assert _lr_after(sched, opt, 12) == pytest.approx(0.05 * 0.5 ** (4 + 1 - 3))
    assert sched.state_dict()["lr"] == pytest.approx(0.05 * 0.25)


def test_update_driven_schedules_reject_several_lrs():
    with pytest.raises(ConfigError, match="single optimization.lr"):
        _scheduler("tri_stage", lr=(0.1, 0.2), warmup_steps=1)


def test_loss_scaler_halves_on_overflow_and_doubles_after_window():
    scaler = DynamicLossScaler(init_scale=128, scale_window=3)
    with pytest.raises(OverflowError):
        scaler.check_overflow(float("inf"))
    assert scaler.loss_scale == 64
    for _ in range(3):
        scaler.check_overflow(1.0)
        scaler.update()
    assert scaler.loss_scale == 128
    tiny = DynamicLossScaler(init_scale=2e-4, min_loss_scale=1e-4)
    with pytest.raises(FloatingPointError, match="minimum loss scale"):
        tiny.check_overflow(float("nan"))
