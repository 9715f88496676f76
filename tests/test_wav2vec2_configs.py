"""The wav2vec 2.0 pretraining yamls compose, finalise against our schema and build fairseq's models."""

import os

import pytest
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.models import build_model

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "config", "pretraining")


def load(name):
    return finalize_config(compose_config(CONFIG_DIR, name, ["task.data=/x"]))


@pytest.mark.parametrize("name,params", [
    ("wav2vec2_base_librispeech", 95_044_608),
    ("wav2vec2_large_librivox", 317_390_592),
    ("wav2vec2_large_librivox_tpu", 317_390_592),
    ("wav2vec2_large_librivox_tpu-pod", 317_390_592),
])
def test_pretraining_yaml_builds_the_published_model(name, params):
    cfg = load(name)
    assert cfg.task.data == "/x" and cfg.criterion.infonce is True
    assert list(cfg.criterion.log_keys) == ["prob_perplexity", "code_perplexity", "temp"]
    assert cfg.optimizer.weight_decay == 0.01 and cfg.lr_scheduler.warmup_updates == 32000
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == params


def test_yaml_values_follow_fairseq():
    base, large = load("wav2vec2_base_librispeech"), load("wav2vec2_large_librivox")
    assert (base.model.final_dim, base.model.encoder_layerdrop, base.model.feature_grad_mult) == (256, 0.05, 0.1)
    assert list(base.criterion.loss_weights) == [0.1, 10] and list(base.optimization.lr) == [0.0005]
    assert base.task.normalize is False and base.dataset.max_tokens == 1_400_000
    assert base.distributed_training.distributed_world_size == 64
    assert large.task.normalize is True and large.dataset.batch_size == 4 and list(large.optimization.lr) == [0.005]
    assert tuple(large.model.latent_temp) == (2.0, 0.1, 0.999995) and str(large.model.extractor_mode) == "layer_norm"
    tpu, pod = load("wav2vec2_large_librivox_tpu"), load("wav2vec2_large_librivox_tpu-pod")
    assert tpu.common.tpu is True and tpu.common.fp16 is False and tpu.common.log_interval == 10
    assert tpu.distributed_training.distributed_world_size == 8
    assert pod.distributed_training.distributed_world_size == 128
