"""fairseq's HuBERT recipe yamls (examples/hubert/config, copied verbatim from fairseq 0.12.2) compose with the
README's command-line overrides, finalise against our schema and build fairseq's models (parameter counts fairseq
0.12.2's HubertModel gives for the same yamls with a 500-unit dictionary)."""

import os

import pytest
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.tasks import setup_task

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "hubert", "config")


@pytest.fixture
def label_dir(tmp_path):
    (tmp_path / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(500)))
    return tmp_path


def pretrain(name, label_dir, *extra):
    """The README's pretraining command: task.data, task.label_dir, task.labels and model.label_rate."""
    overrides = ["task.data=/tsv", f"task.label_dir={label_dir}", 'task.labels=["km"]', "model.label_rate=100", *extra]
    return finalize_config(compose_config(os.path.join(CONFIG_DIR, "pretrain"), name, overrides))


@pytest.mark.parametrize("name,params", [
    ("hubert_base_librispeech", 94_697_600),
    ("hubert_large_librivox", 316_609_408),
    ("hubert_xlarge_librivox", 964_321_664),
])
def test_pretraining_yaml_builds_the_published_model(label_dir, name, params):
    cfg = pretrain(name, label_dir)
    assert cfg.task._name == "hubert_pretraining" and list(cfg.task.labels) == ["km"]
    assert cfg.task.label_rate == cfg.model.label_rate == 100  # task.label_rate: ${model.label_rate}
    assert (cfg.task.max_sample_size, cfg.task.min_sample_size, cfg.task.pad_audio, cfg.task.random_crop) == (
        250000, 32000, False, True)
    assert cfg.criterion._name == "hubert" and list(cfg.criterion.loss_weights) == [10]
    task = setup_task(cfg.task)
    with torch.device("meta"):
        model = task.build_model(cfg.model)
    assert model.label_embs_concat.shape[0] == 504  # 500 units + fairseq's 4 specials
    assert sum(p.numel() for p in model.parameters()) == params


def test_yaml_values_follow_fairseq(label_dir):
    base, large = pretrain("hubert_base_librispeech", label_dir), pretrain("hubert_large_librivox", label_dir)
    assert (base.model.mask_prob, base.model.final_dim, base.model.feature_grad_mult) == (0.80, 256, 0.1)
    assert base.model.untie_final_proj is True and base.dataset.max_tokens == 1_400_000
    assert list(base.optimization.lr) == [0.0005] and base.optimization.max_update == 400000
    assert base.distributed_training.distributed_world_size == 32 and base.task.normalize is False
    assert large.task.normalize is True and large.model.layer_norm_first is True and list(large.optimization.lr) == [
        0.0015]
    assert str(large.model.extractor_mode) == "layer_norm" and large.dataset.max_tokens == 900_000


@pytest.mark.parametrize("group,label_rate", [("iter1", 100), ("iter2", 50)])
def test_label_iteration_groups_set_labels_and_rate(group, label_rate):
    cfg = finalize_config(compose_config(os.path.join(CONFIG_DIR, "pretrain"), "hubert_base_librispeech",
                                         ["task.data=/tsv", f"+data={group}", "task.label_dir=/labels"]))
    assert list(cfg.task.labels) == ["km"] and cfg.task.label_rate == cfg.model.label_rate == label_rate


def test_finetuning_yaml_composes_with_the_readme_overrides(tmp_path):
    cfg = finalize_config(compose_config(os.path.join(CONFIG_DIR, "finetune"), "base_10h",
                                         ["task.data=/tsv", f"task.label_dir={tmp_path}", "model.w2v_path=/hubert.pt"]))
    task_cfg, model = cfg.task, cfg.model
    assert task_cfg._name == "hubert_pretraining" and task_cfg.fine_tuning and task_cfg.single_target
    assert list(task_cfg.labels) == ["ltr"] and task_cfg.label_rate == -1.0 and task_cfg.label_dir == str(tmp_path)
    assert model._name == "hubert_ctc" and model.w2v_path == "/hubert.pt" and model.normalize is False
    assert (model.mask_prob, model.mask_channel_prob, model.mask_channel_length, model.layerdrop) == (
        0.75, 0.5, 64, 0.1)
    assert model.freeze_finetune_updates == 10000 and cfg.dataset.validate_after_updates == 10000
    assert cfg.optimization.max_update == 25000 and list(cfg.optimization.lr) == [2e-5]
    assert cfg.criterion._name == "ctc" and cfg.lr_scheduler._name == "tri_stage"
    assert cfg.checkpoint.best_checkpoint_metric == "wer"


def test_finetuning_groups_compose():
    cfg = finalize_config(compose_config(os.path.join(CONFIG_DIR, "finetune"), "base_10h",
                                         ["task.data=/tsv", "task.label_dir=/labels", "+ckpt=it1", "+lm=ls_4gram"]))
    assert cfg.model.w2v_path.endswith("iter1/hubert.km.randcrop.pmw1_0.puw0_0.grpnorm.ml10.mp0_8.untie.mxsz250000."
                                       "ufreq1.maxtok1400000.MU400k.s1337.ngpu32/checkpoint_last.pt")
    assert (cfg.criterion.wer_lm_weight, cfg.criterion.wer_word_score) == (2.0, -1.0)


@pytest.mark.parametrize("kind,name,overrides,missing", [
    # fairseq's own loop (task.label_rate: ${model.label_rate}, model.label_rate: ${task.label_rate}) is named
    ("pretrain", "hubert_base_librispeech", ["task.label_dir=/labels", 'task.labels=["km"]'], "task.label_rate"),
    ("finetune", "base_10h", ["task.label_dir=/labels"], "model.w2v_path"),
])
def test_mandatory_values_are_named(kind, name, overrides, missing):
    with pytest.raises(ConfigError, match=missing):
        finalize_config(compose_config(os.path.join(CONFIG_DIR, kind), name, ["task.data=/tsv", *overrides]))
