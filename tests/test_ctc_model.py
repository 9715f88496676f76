"""The ``wav2vec_ctc`` model: building from a pretraining checkpoint with fairseq's fine-tuning yamls, the stored
``w2v_args``, checkpoint-kind errors, vocabulary changes, blank handling, freezing, and genuine-layout fairseq
files (cfg era with a pickled fairseq Dictionary, argparse era with packed attention and new weight-norm names)."""

import argparse
import logging
import os

import pytest
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite import checkpoint_utils
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.dataclass.utils import config_to_dict
from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.models import build_model
from fairseq_lite.tasks import setup_task
from test_checkpoint_fairseq_files import fairseq_dictionary_object, forget_fairseq_modules

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "finetuning")
FINETUNING = ["base_10m", "base_1h", "base_10h", "base_100h", "base_960h",
              "vox_10m", "vox_1h", "vox_10h", "vox_100h", "vox_960h"]
TINY = dict(_name="wav2vec2", quantize_targets=True, final_dim=16, encoder_layers=2, encoder_embed_dim=32,
            encoder_ffn_embed_dim=64, encoder_attention_heads=4, conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 2",
            conv_pos=16, conv_pos_groups=4, latent_vars=10, num_negatives=5)
LETTERS = ["|", "E", "T", "A"]


def save_pretrained(folder, normalize=False, **model):
    cfg = finalize_config({"task": {"_name": "audio_pretraining", "data": str(folder), "normalize": normalize},
                           "model": {**TINY, **model}, "criterion": {"_name": "wav2vec", "infonce": True}})
    torch.manual_seed(0)
    pretrained = build_model(cfg.model)
    path = folder / "pretrained.pt"
    torch.save({"args": None, "cfg": config_to_dict(cfg), "model": pretrained.state_dict(), "criterion": None,
                "optimizer_history": [{"num_updates": 9}], "task_state": {}, "extra_state": {}}, path)
    return path, pretrained


@pytest.fixture
def pretrained(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    return save_pretrained(tmp_path)


def finetune_cfg(folder, w2v_path, name="base_100h", *overrides):
    return finalize_config(compose_config(CONFIG_DIR, name, [f"task.data={folder}", f"model.w2v_path={w2v_path}",
                                                             *overrides]))


def build(cfg):
    task = setup_task(cfg.task)
    return task, task.build_model(cfg.model)


def save_finetuned(path, cfg, task, model):
    torch.save({"args": None, "cfg": config_to_dict(cfg), "model": model.state_dict(), "criterion": None,
                "optimizer_history": [{"criterion_name": "CtcCriterion", "num_updates": 100}],
                "task_state": task.state_dict(), "extra_state": {}}, path)


def batch():
    torch.manual_seed(1)
    source = torch.randn(2, 3000)
    padding = torch.zeros(2, 3000, dtype=torch.bool)
    padding[1, 2000:] = True
    return {"source": source.masked_fill(padding, 0.0), "padding_mask": padding}


@pytest.mark.parametrize("name", FINETUNING)
def test_finetuning_yamls_compose_with_fairseqs_values(tmp_path, name):
    cfg = finetune_cfg(tmp_path, "/w2v.pt", name)
    vox = name.startswith("vox")
    assert cfg.task._name == "audio_finetuning" and cfg.task.labels == "ltr" and cfg.task.normalize is vox
    assert cfg.model.normalize is vox and cfg.model.data == str(tmp_path) and cfg.model.apply_mask is True
    assert (cfg.model.mask_channel_length, cfg.model.activation_dropout, cfg.model.feature_grad_mult) == (64, 0.1, 0.0)
    assert cfg.criterion._name == "ctc" and cfg.criterion.zero_infinity and cfg.criterion.sentence_avg is True
    assert cfg.dataset.max_tokens == (1_280_000 if vox else 3_200_000) and cfg.dataset.valid_subset == "dev_other"
    assert cfg.lr_scheduler._name == "tri_stage" and list(cfg.lr_scheduler.phase_ratio) == [0.1, 0.4, 0.5]
    assert cfg.optimizer.adam_eps == 1e-08 and cfg.checkpoint.best_checkpoint_metric == "wer"
    expected = {"base_10m": (5e-5, 0.65, 0.25, 10000), "base_100h": (3e-5, 0.65, 0.5, 0), "vox_1h": (3e-4, 0.75, 0.25, 10000),
                "vox_960h": (3e-5, 0.5, 0.25, 10000)}.get(name)
    if expected:
        m = cfg.model
        assert (cfg.optimization.lr[0], m.mask_prob, m.mask_channel_prob, m.freeze_finetune_updates) == expected


@pytest.mark.parametrize("missing", ["task.data", "model.w2v_path"])
def test_data_and_w2v_path_are_mandatory(tmp_path, missing):
    overrides = [o for o in (f"task.data={tmp_path}", "model.w2v_path=/w2v.pt") if not o.startswith(missing)]
    with pytest.raises(ConfigError, match=missing):
        finalize_config(compose_config(CONFIG_DIR, "base_10h", overrides))


def test_fresh_finetune_loads_weights_applies_overrides_and_stores_w2v_args(tmp_path, pretrained):
    path, source_model = pretrained
    cfg = finetune_cfg(tmp_path, path)
    task, model = build(cfg)
    keys = set(model.state_dict())
    assert {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias", "w2v_encoder.w2v_model.mask_emb"} <= keys
    assert not any(k.split(".")[2] in ("quantizer", "project_q", "final_proj") for k in keys)
    assert model.w2v_encoder.proj.weight.shape == (len(task.target_dictionary), 32) == (8, 32)
    assert (model.w2v_encoder.proj.bias == 0).all()
    for key, value in source_model.state_dict().items():
        if not key.startswith(("quantizer", "project_q", "final_proj")):
            assert torch.equal(model.state_dict()[f"w2v_encoder.w2v_model.{key}"], value), key
    w2v = model.w2v_encoder.w2v_model.cfg
    assert (w2v.dropout, w2v.encoder_layerdrop, w2v.mask_prob, w2v.mask_channel_prob, w2v.feature_grad_mult) == (
        0.0, 0.1, 0.65, 0.5, 0.0)
    stored = cfg.model.w2v_args
    assert stored["criterion"] is None and stored["lr_scheduler"] is None and stored["task"]["data"] == str(tmp_path)
    assert stored["model"]["encoder_layerdrop"] == 0.1
    with torch.no_grad():  # frozen CNN: feature_grad_mult 0 runs it without autograd
        model.train()(**batch())

    save_finetuned(tmp_path / "ft.pt", cfg, task, model)
    os.rename(path, tmp_path / "moved.pt")
    models, loaded_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "ft.pt")])
    with torch.no_grad():
        a = model.eval()(**batch())["encoder_out"]
        b = models[0].eval()(**batch())["encoder_out"]
    assert torch.equal(a, b) and loaded_cfg.model.w2v_args["model"]["encoder_layers"] == 2


def test_normalize_must_match_the_pretraining(tmp_path, pretrained):
    with pytest.raises(ConfigError, match="set task.normalize=False"):
        build(finetune_cfg(tmp_path, pretrained[0], "vox_10h"))


def test_wrong_checkpoint_kinds_are_named(tmp_path, pretrained):
    cfg = finetune_cfg(tmp_path, pretrained[0])
    task, model = build(cfg)
    save_finetuned(tmp_path / "ft.pt", cfg, task, model)
    with pytest.raises(CheckpointError, match="is a fine-tuned CTC checkpoint.*finetune_from_model"):
        build(finetune_cfg(tmp_path, tmp_path / "ft.pt"))
    with pytest.raises(CheckpointError, match="pretraining weights"):
        model.load_state_dict(torch.load(pretrained[0])["model"])


def test_new_vocabulary_reinitialises_the_output_layer(tmp_path, pretrained, caplog):
    cfg = finetune_cfg(tmp_path, pretrained[0])
    _, model = build(cfg)
    state = model.state_dict()
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS + ["O", "N"]))
    _, bigger = build(finetune_cfg(tmp_path, pretrained[0]))
    fresh = bigger.w2v_encoder.proj.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        bigger.load_state_dict(state)
    assert "re-initialising w2v_encoder.proj" in caplog.text
    assert torch.equal(bigger.w2v_encoder.proj.weight, fresh) and fresh.shape[0] == 10
    key = "w2v_encoder.w2v_model.encoder.layers.0.fc1.weight"
    assert torch.equal(bigger.state_dict()[key], state[key])


def test_get_logits_forces_blank_on_padding_and_applies_blank_weight(tmp_path, pretrained):
    _, model = build(finetune_cfg(tmp_path, pretrained[0]))
    model.eval()
    with torch.no_grad():
        out = model(**batch())
        logits = model.get_logits(out)
    pad = out["padding_mask"].t()
    assert pad.any() and not pad[:, 0].any()
    assert (logits[pad][:, 0] == 0).all() and torch.isinf(logits[pad][:, 1:]).all()
    assert torch.equal(logits[~pad], out["encoder_out"][~pad])
    lp = model.get_normalized_probs(out, log_probs=True)
    assert lp.dtype == torch.float32 and torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]))
    model.blank_weight = 3.0
    assert torch.allclose(model.get_logits(out)[~pad][:, 0], out["encoder_out"][~pad][:, 0] + 3.0)
    model.blank_mode = "set"
    assert (model.get_logits(out)[~pad][:, 0] == 3.0).all()


def test_freeze_finetune_updates_and_feature_grad_mult(tmp_path, pretrained):
    cfg = finetune_cfg(tmp_path, pretrained[0], "base_100h", "model.freeze_finetune_updates=3",
                       "model.feature_grad_mult=0.1", "model.apply_mask=false", "model.layerdrop=0.0")
    _, model = build(cfg)
    model.train()
    encoder = model.w2v_encoder
    model(**batch())["encoder_out"].sum().backward()
    assert encoder.proj.weight.grad is not None
    assert all(p.grad is None for p in encoder.w2v_model.parameters())
    model.zero_grad(set_to_none=True)
    model.set_num_updates(3)
    model(**batch())["encoder_out"].sum().backward()
    assert encoder.w2v_model.feature_extractor.conv_layers[0][0].weight.grad is not None
    assert encoder.w2v_model.encoder.layers[0].fc1.weight.grad is not None


def test_masking_during_finetuning_changes_training_outputs_only(tmp_path, pretrained):
    _, model = build(finetune_cfg(tmp_path, pretrained[0], "base_100h", "model.layerdrop=0.0"))
    torch.manual_seed(3)
    with torch.no_grad():
        train_out = model.train()(**batch())["encoder_out"]
        eval_a, eval_b = (model.eval()(**batch())["encoder_out"] for _ in range(2))
    assert torch.equal(eval_a, eval_b) and not torch.allclose(train_out, eval_a)


def test_conformer_pretraining_finetunes_without_repeating_layer_type(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    path, _ = save_pretrained(tmp_path, layer_type="conformer", attn_type="espnet", pos_enc_type="rope",
                              depthwise_conv_kernel_size=5)
    cfg = finetune_cfg(tmp_path, path)
    _, model = build(cfg)
    assert str(cfg.model.layer_type) == "conformer"  # written back, so fairseq itself rebuilds it right
    assert str(model.w2v_encoder.w2v_model.cfg.layer_type) == "conformer"
    with torch.no_grad():
        assert model.eval()(**batch())["encoder_out"].shape[-1] == 8
    (tmp_path / "t").mkdir()
    other, _ = save_pretrained(tmp_path / "t")
    with pytest.raises(ConfigError, match="layer_type=conformer but the pretrained model is a transformer"):
        build(finetune_cfg(tmp_path, other, "base_100h", "model.layer_type=conformer"))


def test_genuine_cfg_era_finetuned_file_with_pickled_fairseq_dictionary(tmp_path, pretrained):
    cfg = finetune_cfg(tmp_path, pretrained[0])
    task, model = build(cfg)
    state = {"args": None, "cfg": config_to_dict(cfg), "model": model.state_dict(), "criterion": None,
             "optimizer_history": [{"criterion_name": "CtcCriterion", "optimizer_name": "FP16Optimizer",
                                    "lr_scheduler_state": {"best": 12.5}, "num_updates": 20000}],
             "task_state": {"target_dictionary": fairseq_dictionary_object(LETTERS)},
             "extra_state": {"val_loss": 3.5}}
    state["cfg"]["model"]["some_newer_fairseq_key"] = 1
    torch.save(state, tmp_path / "genuine.pt")
    forget_fairseq_modules()
    os.rename(pretrained[0], tmp_path / "moved.pt")
    models, _, loaded_task = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "genuine.pt")],
                                                                          arg_overrides={"data": str(tmp_path)})
    assert isinstance(loaded_task.target_dictionary, Dictionary) and loaded_task.target_dictionary.index("E") == 5
    with torch.no_grad():
        assert torch.equal(models[0].eval()(**batch())["encoder_out"], model.eval()(**batch())["encoder_out"])


def test_argparse_era_finetuned_file_loads_with_packed_attention_and_new_weight_norm_names(tmp_path, pretrained):
    cfg = finetune_cfg(tmp_path, pretrained[0], "base_100h")
    task, model = build(cfg)
    w2v = cfg.model.w2v_args["model"]
    pretraining_args = argparse.Namespace(arch="wav2vec2", task="audio_pretraining", criterion="wav2vec",
                                          normalize=False, data="/old", lr=0.0005, **{k: v for k, v in w2v.items()
                                                                                    if k != "_name"})
    finetune_args = argparse.Namespace(arch="wav2vec_ctc", task="audio_pretraining", criterion="ctc",
                                       labels="ltr", normalize=False, data="/old", w2v_path="/gone/wav2vec_small.pt",
                                       w2v_args=pretraining_args, apply_mask=True, mask_prob=0.65, layerdrop=0.1,
                                       mask_channel_prob=0.5, mask_channel_length=64, feature_grad_mult=0.0,
                                       final_dropout=0.0, lr=3e-5, max_update=80000, sentence_avg=True)
    weights = dict(model.state_dict())
    prefix = "w2v_encoder.w2v_model.encoder."
    for layer in range(2):
        attn = f"{prefix}layers.{layer}.self_attn."
        for part in ("weight", "bias"):
            weights[f"{attn}in_proj_{part}"] = torch.cat([weights.pop(f"{attn}{n}_proj.{part}") for n in "qkv"])
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        weights[f"{prefix}pos_conv.0.parametrizations.weight.{new}"] = weights.pop(f"{prefix}pos_conv.0.{old}")
    torch.save({"args": finetune_args, "model": weights, "optimizer_history": [{"num_updates": 80000}]},
               tmp_path / "legacy.pt")
    # like wav2vec_small_960h.pt: task audio_pretraining and no stored dictionary, so infer.py passes the task
    finetuning_task = setup_task(finalize_config({"task": {"_name": "audio_finetuning", "data": str(tmp_path),
                                                           "labels": "ltr"}}).task)
    models, loaded_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "legacy.pt")],
                                                                          task=finetuning_task)
    assert loaded_cfg.model._name == "wav2vec_ctc" and loaded_cfg.model.w2v_args["model"]["_name"] == "wav2vec2"
    with torch.no_grad():
        assert torch.allclose(models[0].eval()(**batch())["encoder_out"], model.eval()(**batch())["encoder_out"],
                              atol=1e-6)


def test_freeze_regex_freezes_matching_parameters(tmp_path, pretrained):
    _, model = build(finetune_cfg(tmp_path, pretrained[0], "base_100h", "model.freeze_regex=encoder\\.layers\\.0\\."))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".encoder.layers.0." in n for n in frozen)
    assert model.w2v_encoder.w2v_model.encoder.layers[1].fc1.weight.requires_grad
