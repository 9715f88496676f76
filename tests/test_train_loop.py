"""The training loop in one process: checkpoints, resume, reset flags, validation, logging, precision."""

import json
import logging
import os
import re

import pytest
import torch

import train_toy
from fairseq_lite.errors import CheckpointError, ConfigError, FairseqLiteError
from fairseq_lite.training.distributed import check_world_size
from fairseq_lite.training.train import main
from fairseq_lite.training.trainer import Trainer
from fairseq_lite.tasks import setup_task

FAIRSEQ_KEYS = {"args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state",
                "last_optimizer_state"}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _metrics(save_dir, tag="train_inner"):
    """step -> record of the last line with ``tag`` (a resumed run rewrites the steps after its checkpoint)."""
    out = {}
    with open(os.path.join(save_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record["tag"] == tag:
                out[record["step"]] = record
    return out


def test_checkpoint_has_fairseq_layout_and_file_policy(tmp_path):
    cfg = train_toy.toy_config(
        tmp_path, optimization={"max_update": 20},
        checkpoint={"save_interval_updates": 3, "keep_interval_updates": 2},
        dataset={"valid_subset": "valid,valid2"},
    )
    best = main(cfg)
    names = set(os.listdir(tmp_path))
    # one epoch is 16 updates: checkpoint1.pt at its end, mid-epoch files pruned to the last two
    assert {"checkpoint1.pt", "checkpoint_best.pt", "checkpoint_last.pt", "metrics.jsonl"} <= names
    assert sorted(n for n in names if n.count("_") == 2) == ["checkpoint_1_15.pt", "checkpoint_2_18.pt"]
    assert not [n for n in names if n.endswith(".tmp")]

    state = _load(tmp_path / "checkpoint_last.pt")
    assert set(state) == FAIRSEQ_KEYS
    assert state["args"] is None and isinstance(state["cfg"], dict)
    assert state["cfg"]["optimizer"]["adam_betas"] == "(0.9,0.98)" and state["cfg"]["task"]["_name"] == "toy_regression"
    last = state["optimizer_history"][-1]
    assert last["criterion_name"] == "ToyCriterion" and last["optimizer_name"] == "FairseqAdam"
    assert last["num_updates"] == 20 and "lr_scheduler_state" in last
    extra = state["extra_state"]
    assert extra["train_iterator"] == {"version": 2, "epoch": 2, "iterations_in_epoch": 4, "shuffle": True}
    assert {"metrics", "previous_training_time", "val_loss", "best"} <= set(extra)
    assert extra["best"] == pytest.approx(best)
    assert set(state["last_optimizer_state"]) == {"state", "param_groups"}

    valid = _metrics(tmp_path, "valid")
    valid2 = _metrics(tmp_path, "valid2")
    assert set(valid) == set(valid2) and 20 in valid and "best_loss" in valid[20]
    inner = _metrics(tmp_path)
    assert sorted(inner) == list(range(1, 21))
    assert {"loss", "gnorm", "clip", "lr", "wpb", "bsz", "ups", "wps", "wall"} <= set(inner[5])
    assert inner[20]["loss"] < inner[1]["loss"]


def test_resume_from_checkpoint_last_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    main(train_toy.toy_config(straight, optimization={"max_update": 24}))
    resumed = tmp_path / "resumed"
    main(train_toy.toy_config(resumed, optimization={"max_update": 10}))
    main(train_toy.toy_config(resumed, optimization={"max_update": 24}))
    a, b = _load(straight / "checkpoint_last.pt"), _load(resumed / "checkpoint_last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ma, mb = _metrics(straight), _metrics(resumed)
    assert [ma[s]["loss"] for s in range(1, 25)] == [mb[s]["loss"] for s in range(1, 25)]
    # epoch-level meters survived the restart too
    ta, tb = _metrics(straight, "train"), _metrics(resumed, "train")
    assert ta[16]["loss"] == pytest.approx(tb[16]["loss"], rel=1e-12)


def test_reset_flags_finetune_and_restore_errors(tmp_path):
    first = tmp_path / "first"
    main(train_toy.toy_config(first, optimization={"max_update": 4}))
    ckpt = str(first / "checkpoint_last.pt")

    with pytest.raises(CheckpointError, match="does not exist"):
        main(train_toy.toy_config(tmp_path / "x", checkpoint={"restore_file": str(tmp_path / "missing.pt")}))
    with pytest.raises(ConfigError, match="reset"):
        main(train_toy.toy_config(tmp_path / "y", checkpoint={"finetune_from_model": ckpt, "reset_optimizer": True}))
    with pytest.raises(CheckpointError, match="reset_optimizer=true"):
        main(train_toy.toy_config(first, common={"amp": True}, optimization={"max_update": 6}))

    ft = tmp_path / "ft"
    main(train_toy.toy_config(ft, optimization={"max_update": 2}, checkpoint={"finetune_from_model": ckpt}))
    state = _load(ft / "checkpoint_last.pt")
    assert [h["num_updates"] for h in state["optimizer_history"]] == [2]
    assert state["extra_state"]["train_iterator"]["epoch"] == 1

    restored = tmp_path / "restored"
    main(train_toy.toy_config(restored, optimization={"max_update": 6},
                              checkpoint={"restore_file": ckpt, "reset_dataloader": True}))
    state = _load(restored / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 6
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] == 2  # restarted the epoch at batch 0


def test_patience_stops_early_and_unknown_best_metric_is_named(tmp_path):
    cfg = train_toy.toy_config(
        tmp_path, optimization={"max_update": 200, "lr": [0.3]},
        dataset={"validate_interval_updates": 1},
        checkpoint={"patience": 2, "no_epoch_checkpoints": True},
    )
    main(cfg)
    valid = _metrics(tmp_path, "valid")
    steps = sorted(valid)
    assert steps[-1] < 200
    losses = [valid[s]["loss"] for s in steps]
    assert min(losses[:-2]) <= min(losses[-2:])

    with pytest.raises(ConfigError, match="best_checkpoint_metric 'wer'"):
        main(train_toy.toy_config(tmp_path / "m", checkpoint={"best_checkpoint_metric": "wer"}))


def test_pruning_policies_keep_the_best_the_last_epochs_and_no_save_writes_nothing(tmp_path):
    cfg = train_toy.toy_config(
        tmp_path / "best", optimization={"max_update": 40}, dataset={"validate_interval_updates": 2},
        checkpoint={"keep_best_checkpoints": 2, "best_checkpoint_metric": "neg_loss",
                    "maximize_best_checkpoint_metric": True, "keep_last_epochs": 1},
    )
    main(cfg)
    names = os.listdir(tmp_path / "best")
    # epochs of 16 updates: checkpoint1.pt and checkpoint2.pt were written, only the last epoch is kept
    assert [n for n in names if re.fullmatch(r"checkpoint\d+\.pt", n)] == ["checkpoint2.pt"]
    best_files = sorted(n for n in names if n.startswith("checkpoint.best_neg_loss_-"))
    scores = sorted({round(r["neg_loss"], 3) for r in _metrics(tmp_path / "best", "valid").values()}, reverse=True)
    assert len(best_files) == 2
    kept = sorted(float(re.search(r"_(-\d+\.\d{3})\d*\.pt$", n).group(1)) for n in best_files)
    assert kept == sorted(scores[:2])  # the two highest (least negative) values, none of the worse ones

    main(train_toy.toy_config(tmp_path / "none", checkpoint={"no_save": True}))
    assert not os.path.exists(tmp_path / "none")  # not even the save_dir


def test_json_log_format_and_log_interval(tmp_path, caplog):
    cfg = train_toy.toy_config(tmp_path, common={"log_format": "json", "log_interval": 4})
    with caplog.at_level(logging.INFO, logger="fairseq_lite.train"):
        main(cfg)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    inner = [r for r in records if "loss" in r]
    assert [r["num_updates"] for r in inner] == [4, 8]
    assert {"epoch", "update", "gnorm", "lr"} <= set(inner[0])
    assert any("valid_loss" in r for r in records) and any("train_loss" in r for r in records)


def test_nan_batch_is_skipped_with_its_ids_and_training_continues(tmp_path, caplog):
    cfg = train_toy.toy_config(tmp_path, task={"nan_example": 5}, optimization={"max_update": 20})
    with caplog.at_level(logging.WARNING, logger="fairseq_lite.trainer"):
        main(cfg)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "inf/NaN" in skipped[0] and "5" in skipped[0].split("ids in the batch:")[1]
    state = _load(tmp_path / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 20
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _trainer(tmp_path, **groups):
    cfg = train_toy.toy_config(tmp_path, **groups)
    task = setup_task(cfg.task)
    torch.manual_seed(0)
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    return trainer, itr


def test_fp16_overflow_skips_update_without_advancing_num_updates(tmp_path):
    trainer, itr = _trainer(tmp_path, common={"fp16": True})
    model = trainer.unwrapped_model
    assert next(model.parameters()).dtype == torch.float16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = model.out.weight.register_hook(lambda g: g * float("inf"))
    assert trainer.train_step([next(itr)]) is None
    handle.remove()
    assert trainer.get_num_updates() == 0 and trainer.optimizer.loss_scale == 64.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stats = trainer.train_step([next(itr)])
    assert trainer.get_num_updates() == 1 and stats["loss_scale"] == 64.0
    assert type(trainer.optimizer).__name__ == "FP16Optimizer"
    assert trainer.state_dict()["last_optimizer_state"]["loss_scale"] == 64.0


def test_amp_overflow_retries_the_batch_at_a_lower_scale(tmp_path):
    trainer, itr = _trainer(tmp_path, common={"amp": True, "amp_init_scale": 1024})
    model = trainer.unwrapped_model
    calls = []

    def inf_once(grad):
        calls.append(1)
        return grad * float("inf") if len(calls) == 1 else grad

    handle = model.out.weight.register_hook(inf_once)
    stats = trainer.train_step([next(itr)])
    handle.remove()
    assert len(calls) == 2 and stats is not None and trainer.get_num_updates() == 1
    assert trainer.optimizer.loss_scale == 512.0


@pytest.mark.parametrize("precision,name", [({"bf16": True}, "FP16Optimizer"), ({"amp": True}, "AMPOptimizer"),
                                            ({"memory_efficient_bf16": True}, "MemoryEfficientFP16Optimizer")])
def test_bf16_and_amp_train_and_set_num_updates_reaches_submodules(tmp_path, precision, name):
    trainer, itr = _trainer(tmp_path, common=precision, optimization={"lr": [0.05]})
    losses = [trainer.train_step([next(itr), next(itr)])["loss"] for _ in range(6)]
    assert type(trainer.optimizer).__name__ == name
    assert trainer.get_num_updates() == 6 and trainer.unwrapped_model.counter.num_updates == 6
    assert sum(losses[-2:]) < sum(losses[:2])


def test_update_freq_normalises_by_total_sample_size(tmp_path):
    """Two micro-batches in one update equal one batch holding both (summed loss / Σsample_size)."""
    split, _ = _trainer(tmp_path / "a", optimization={"clip_norm": 0.0})
    joined, _ = _trainer(tmp_path / "b")
    dataset = split.task.dataset("train")
    first, second = dataset.collater([dataset[i] for i in (0, 1)]), dataset.collater([dataset[i] for i in (2, 3, 4)])
    both = dataset.collater([dataset[i] for i in range(5)])
    split.train_step([first, second])
    joined.train_step([both])
    for (k, a), b in zip(split.unwrapped_model.state_dict().items(), joined.unwrapped_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_out_of_memory_says_what_to_reduce(tmp_path, monkeypatch):
    trainer, itr = _trainer(tmp_path, dataset={"max_tokens": 1000})

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer.task, "train_step", boom)
    with pytest.raises(FairseqLiteError, match=r"lower dataset.max_tokens \(now 1000\).*update_freq"):
        trainer.train_step([next(itr)])
    monkeypatch.undo()
    monkeypatch.setattr(trainer.optimizer, "step", boom)  # e.g. Adam's state allocated by the first step
    with pytest.raises(FairseqLiteError, match=r"out of memory in training update 1 .*max_tokens"):
        trainer.train_step([next(itr)])
    monkeypatch.setattr(trainer.task, "valid_step", boom)
    with pytest.raises(FairseqLiteError, match=r"out of memory in validation .*dataset.max_tokens_valid \(now 1000\)"):
        trainer.valid_step(next(itr))


def test_world_size_larger_than_devices_suggests_update_freq(tmp_path):
    cfg = train_toy.toy_config(tmp_path, common={"cpu": False}, distributed_training={"distributed_world_size": 64},
                               optimization={"update_freq": [2]})
    with pytest.raises(ConfigError, match=r"distributed_world_size=64 .*update_freq=\[\d+\]"):
        check_world_size(cfg)


def test_tensorboard_events_and_missing_wandb_is_a_warning(tmp_path, caplog):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    cfg = train_toy.toy_config(tmp_path / "run", common={"tensorboard_logdir": str(logdir), "wandb_project": "toy"})
    with caplog.at_level(logging.WARNING):
        main(cfg)
    events = EventAccumulator(str(logdir / "train_inner"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 9))
    assert (logdir / "valid").is_dir()
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert any("wandb is not installed" in r.getMessage() for r in caplog.records)
