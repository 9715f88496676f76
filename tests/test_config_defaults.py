"""FairseqConfig field names and defaults against the reference table (fairseq-wav2vec.md §1.3)."""

import pytest

from fairseq_lite.dataclass.configs import FairseqConfig
from fairseq_lite.dataclass.initialize import finalize_config

REFERENCE_DEFAULTS = {
    "common.log_interval": 100,
    "common.log_format": None,
    "common.seed": 1,
    "common.fp16": False,
    "common.bf16": False,
    "common.amp": False,
    "common.memory_efficient_fp16": False,
    "common.fp16_init_scale": 128,
    "common.fp16_scale_window": None,
    "common.fp16_scale_tolerance": 0.0,
    "common.min_loss_scale": 1e-4,
    "common.tpu": False,
    "common.cpu": False,
    "common.empty_cache_freq": 0,
    "common.user_dir": None,
    "common.reset_logging": False,
    "common_eval.model_overrides": "{}",
    "distributed_training.distributed_backend": "nccl",
    "distributed_training.ddp_backend": "pytorch_ddp",
    "distributed_training.distributed_port": -1,
    "distributed_training.find_unused_parameters": False,
    "distributed_training.bucket_cap_mb": 25,
    "distributed_training.distributed_no_spawn": False,
    "dataset.num_workers": 1,
    "dataset.max_tokens": None,
    "dataset.batch_size": None,
    "dataset.required_batch_size_multiple": 8,
    "dataset.train_subset": "train",
    "dataset.valid_subset": "valid",
    "dataset.validate_interval": 1,
    "dataset.validate_interval_updates": 0,
    "dataset.validate_after_updates": 0,
    "dataset.skip_invalid_size_inputs_valid_test": False,
    "dataset.gen_subset": "test",
    "dataset.disable_validation": False,
    "optimization.max_epoch": 0,
    "optimization.max_update": 0,
    "optimization.clip_norm": 0.0,
    "optimization.sentence_avg": False,
    "optimization.update_freq": [1],
    "optimization.lr": [0.25],
    "optimization.stop_min_lr": -1.0,
    "optimization.skip_remainder_batch": False,
    "checkpoint.save_dir": "checkpoints",
    "checkpoint.restore_file": "checkpoint_last.pt",
    "checkpoint.finetune_from_model": None,
    "checkpoint.reset_dataloader": False,
    "checkpoint.reset_lr_scheduler": False,
    "checkpoint.reset_meters": False,
    "checkpoint.reset_optimizer": False,
    "checkpoint.optimizer_overrides": "{}",
    "checkpoint.save_interval": 1,
    "checkpoint.save_interval_updates": 0,
    "checkpoint.keep_interval_updates": -1,
    "checkpoint.keep_last_epochs": -1,
    "checkpoint.keep_best_checkpoints": -1,
    "checkpoint.no_epoch_checkpoints": False,
    "checkpoint.no_last_checkpoints": False,
    "checkpoint.no_save": False,
    "checkpoint.no_save_optimizer_state": False,
    "checkpoint.best_checkpoint_metric": "loss",
    "checkpoint.maximize_best_checkpoint_metric": False,
    "checkpoint.patience": -1,
    "generation.beam": 5,
}


@pytest.fixture(scope="module")
def defaults():
    return finalize_config({})


@pytest.mark.parametrize("key", sorted(REFERENCE_DEFAULTS))
def test_default_matches_reference(defaults, key):
    group, name = key.split(".")
    assert getattr(getattr(defaults, group), name) == REFERENCE_DEFAULTS[key]


def test_interpolated_fields_follow_their_source():
    cfg = finalize_config({"common": {"fp16": True, "tpu": True}, "dataset": {"max_tokens": 1400000, "batch_size": 4}})
    assert cfg.distributed_training.fp16 is True and cfg.distributed_training.tpu is True
    assert cfg.dataset.max_tokens_valid == 1400000 and cfg.dataset.batch_size_valid == 4


def test_world_size_default_counts_visible_devices(defaults):
    import torch

    assert defaults.distributed_training.distributed_world_size == max(1, torch.cuda.device_count())


def test_mutable_defaults_are_not_shared():
    a, b = FairseqConfig(), FairseqConfig()
    a.optimization.update_freq.append(2)
    assert b.optimization.update_freq == [1]


def test_finalized_config_pickles_for_spawned_ranks():
    import pickle

    cfg = finalize_config({"distributed_training": {"ddp_backend": "legacy_ddp"}, "common": {"log_format": "json"}})
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy.distributed_training.ddp_backend == "legacy_ddp" and copy.common.log_format == "json"
