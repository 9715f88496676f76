"""Continued w2v-BERT pretraining (issue 17): a tiny random HF ``Wav2Vec2BertModel`` converted to ours
(scripts/convert_from_hf.py's ``import_checkpoint_from_hf``), trained by fairseq-hydra-train with
config/pretraining/w2v_bert_demo.yaml on the demo corpus from ``checkpoint.finetune_from_model`` (the heads HF
lacks start fresh), resumed exactly, exported back to HF (encoder only) and fine-tuned from with CTC; the loss
terms recomputed by hand.
"""

import glob
import json
import logging
import os
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch
import transformers

from fairseq_lite import checkpoint_utils
from fairseq_lite.cli import hydra_train
from fairseq_lite.criterions.w2v_bert_criterion import W2vBertCriterion
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.manifest import write_manifest
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.hf_files import export_checkpoint_to_hf, import_checkpoint_from_hf
from fairseq_lite.interop.huggingface_w2v_bert import hf_w2v_bert_config_kwargs
from fairseq_lite.models.w2v_bert.w2v_bert import PRETRAINING_HEADS, W2vBertConfig, W2vBertModel
from fairseq_lite.models.w2v_bert.w2v_bert_asr import W2vBertCtc, W2vBertCtcConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_TRAIN = os.path.join(REPO, "demo", "corpus", "train")
CONFIG_DIR = os.path.join(REPO, "config", "pretraining")
#: the issue's tiny w2v-BERT: 32 dims, 2 layers, conv kernel 5, positions clipped to 8 left / 2 right
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_depthwise_kernel_size=5, left_max_position_embeddings=8, right_max_position_embeddings=2)
#: the demo yaml at the HF model's sizes, a smaller codebook and fewer distractors; masks of 2 frames (the
#: recipe's 10-frame spans leave the tiny model at chance for longer than a test runs)
OVERRIDES = ["model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64", "model.encoder_attention_heads=4",
             "model.final_dim=16", "model.latent_dim=16", "model.latent_vars=32", "model.num_negatives=10",
             "model.mask_length=2", "model.mask_prob=0.5", "task.max_sample_size=32000", "dataset.max_tokens=96000",
             "optimization.lr=[0.002]", "lr_scheduler._name=fixed", "common.log_interval=1",
             "common.log_format=none"]
UPDATES, RESUME_AT = 30, 24
TINY = W2vBertConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                     depthwise_conv_kernel_size=5, left_max_position_embeddings=8, right_max_position_embeddings=2,
                     num_bert_encoder_layers=1, latent_vars=16, latent_dim=16, final_dim=16, num_negatives=5,
                     conformer_conv_dropout=0.0)


def train(data, out, *extra):
    assert hydra_train.main(["--config-dir", CONFIG_DIR, "--config-name", "w2v_bert_demo", f"task.data={data}",
                             f"hydra.run.dir={out}", f"checkpoint.save_dir={out}", *OVERRIDES, *extra]) == 0


def records(save_dir):
    with open(os.path.join(save_dir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["tag"] == "train_inner"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The converted HF model, a straight run of UPDATES updates from it and a run resumed at RESUME_AT."""
    work = tmp_path_factory.mktemp("w2v_bert_pretraining")
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(**HF_TINY))
    hf.save_pretrained(work / "hf")
    assert import_checkpoint_from_hf(str(work / "hf"), str(work / "converted.pt")) == "w2v_bert"
    files = sorted(glob.glob(os.path.join(CORPUS_TRAIN, "*", "*", "*.flac")))
    items = [(os.path.relpath(f, CORPUS_TRAIN), sf.info(f).frames) for f in files]
    for split in ("train", "valid"):
        write_manifest(str(work / f"{split}.tsv"), CORPUS_TRAIN, items)
    straight, resumed = work / "straight", work / "resumed"
    train(work, straight, f"optimization.max_update={UPDATES}", f"checkpoint.save_interval_updates={RESUME_AT}",
          f"checkpoint.finetune_from_model={work / 'converted.pt'}")
    train(work, resumed, f"optimization.max_update={UPDATES}",
          f"checkpoint.restore_file={straight / f'checkpoint_1_{RESUME_AT}.pt'}")
    return work


def test_continued_pretraining_from_hf_weights_learns(runs):
    inner = records(runs / "straight")
    assert sorted(inner) == list(range(1, UPDATES + 1))
    first, last = [inner[u] for u in range(1, 11)], [inner[u] for u in range(UPDATES - 9, UPDATES + 1)]

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)

    assert {"loss_contrastive", "loss_mlm", "loss_diversity", "loss_features_pen", "accuracy", "mlm_accuracy",
            "prob_perplexity", "temp"} <= set(inner[1])
    assert mean("loss", last) < mean("loss", first) - 0.4
    assert mean("loss_contrastive", last) < mean("loss_contrastive", first) - 0.15
    assert mean("accuracy", last) > mean("accuracy", first) + 0.02
    # the encoder started from the HF weights: its parameters moved away from them, the heads were added
    start = torch.load(runs / "converted.pt", weights_only=False)["model"]
    end = torch.load(runs / "straight" / "checkpoint_last.pt", weights_only=False)["model"]
    assert set(end) - set(start) == {k for k in end if k.split(".")[0] in PRETRAINING_HEADS} != set()
    assert all(end[k].shape == v.shape for k, v in start.items())


def test_resumed_run_equals_the_straight_one(runs):
    straight, resumed = records(runs / "straight"), records(runs / "resumed")
    assert sorted(resumed) == list(range(RESUME_AT + 1, UPDATES + 1))
    assert [resumed[u]["loss"] for u in resumed] == [straight[u]["loss"] for u in resumed]
    a = torch.load(runs / "straight" / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(runs / "resumed" / "checkpoint_last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretrained_checkpoint_exports_to_hf_encoder(runs):
    path = str(runs / "straight" / "checkpoint_last.pt")
    export_checkpoint_to_hf(path, str(runs / "hf_out"))
    hf = transformers.Wav2Vec2BertModel.from_pretrained(runs / "hf_out").eval()
    [ours], _, _ = checkpoint_utils.load_model_ensemble_and_task([path])
    ours.eval()
    torch.manual_seed(1)
    source = torch.randn(2, 20000) * 0.1
    padding = torch.zeros(2, 20000, dtype=torch.bool)
    padding[1, 13000:] = True
    with torch.no_grad():
        features, frame_padding = ours.forward_frontend(source, padding)
        mine = ours.encode(features, frame_padding)
        theirs = hf(input_features=features, attention_mask=(~frame_padding).long(), output_hidden_states=True)
    valid = ~frame_padding
    for (layer_out, _, _), hidden in zip(mine["layer_results"], theirs.hidden_states[1:]):
        torch.testing.assert_close(layer_out[valid], hidden[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(mine["x"][valid], theirs.last_hidden_state[valid], atol=1e-5, rtol=0)


def test_ctc_fine_tuning_starts_from_the_pretrained_encoder(runs):
    path = str(runs / "straight" / "checkpoint_last.pt")
    dictionary = Dictionary.load(os.path.join(REPO, "demo", "corpus", "dict.ltr.txt"))
    cfg = W2vBertCtcConfig(w2v_path=path, normalize=False, data=str(runs))
    model = W2vBertCtc.build_model(cfg, SimpleNamespace(target_dictionary=dictionary))
    weights = model.state_dict()
    pretrained = torch.load(path, weights_only=False)["model"]
    backbone = {k: v for k, v in pretrained.items() if k.split(".")[0] not in PRETRAINING_HEADS}
    assert {k for k in weights if k.startswith("w2v_encoder.w2v_model.")} == {
        "w2v_encoder.w2v_model." + k for k in backbone}
    assert all(torch.equal(weights["w2v_encoder.w2v_model." + k], v) for k, v in backbone.items())


def _batch():
    torch.manual_seed(2)
    source = torch.randn(3, 24000) * 0.1
    padding = torch.zeros(3, 24000, dtype=torch.bool)
    padding[2, 17000:] = True
    return {"id": torch.arange(3), "net_input": {"source": source, "padding_mask": padding}}


def test_loss_terms_equal_a_hand_computation():
    torch.manual_seed(0)
    model = W2vBertModel(TINY).eval()  # eval: the quantizer's targets are its argmax codes, not Gumbel draws
    sample = _batch()
    criterion = W2vBertCriterion(bert_loss_weight=2.0, w2v2_loss_weight=0.5, loss_weights=[0.1, 10])
    torch.manual_seed(5)
    loss, sample_size, log = criterion(model, sample)
    torch.manual_seed(5)  # the same masks and distractors
    out = model(**sample["net_input"])
    torch.manual_seed(5)
    features, frame_padding = model.forward_frontend(**sample["net_input"])
    enc = model.encode(features, frame_padding, mask=True)
    masked = enc["mask_indices"]
    ids = model.quantizer.weight_proj(enc["features_unprojected"][masked]).argmax(-1)
    mlm_logits = model.mlm_proj(enc["x"][masked])
    mlm = (mlm_logits.logsumexp(-1) - mlm_logits.gather(1, ids[:, None])[:, 0]).sum()
    assert sample_size == masked.sum() == out["mlm_targets"].numel()
    assert torch.equal(out["mlm_targets"][:, 0], ids)
    assert log["loss_mlm"] == pytest.approx(mlm.item(), rel=1e-5)
    assert log["mlm_correct"] == int((mlm_logits.argmax(-1) == ids).sum()) and log["mlm_count"] == sample_size

    # contrastive: layer encoder_layers - num_bert_encoder_layers = 1's output against project_q of the codewords
    x = model.final_proj(enc["layer_results"][0][0][masked])
    y = model.project_q(model.quantizer.vars[0, ids])
    scores = torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1) / TINY.logit_temp
    logits = out["x"].permute(1, 2, 0).reshape(-1, TINY.num_negatives + 1)  # frames in mask order × candidates
    torch.testing.assert_close(logits[:, 0], scores.diagonal(), rtol=1e-5, atol=1e-5)
    rows = torch.nonzero(masked)[:, 0]
    for i in range(len(ids)):  # each distractor: another masked frame of the same utterance, or -inf for a twin
        others = scores[i][(rows == rows[i]) & (torch.arange(len(ids)) != i)]
        for value in logits[i, 1:]:
            assert value == float("-inf") or (others - value).abs().min() < 1e-4
    contrastive = (logits.logsumexp(-1) - logits[:, 0]).sum()
    assert log["loss_contrastive"] == pytest.approx(contrastive.item(), rel=1e-5)
    correct = int(((logits[:, 0:1] > logits[:, 1:]).all(-1)).sum())
    assert (log["correct"], log["count"]) == (correct, sample_size)

    probs = torch.softmax(model.quantizer.weight_proj(enc["features_unprojected"][masked]), -1).mean(0)
    diversity = (TINY.latent_vars - torch.exp(-(probs * torch.log(probs + 1e-7)).sum())) / TINY.latent_vars
    penalty = features.pow(2).mean()
    assert log["loss_diversity"] == pytest.approx(0.1 * diversity.item() * sample_size, rel=1e-4)
    assert log["loss_features_pen"] == pytest.approx(10 * penalty.item() * sample_size, rel=1e-5)
    expected = 2.0 * mlm + 0.5 * (contrastive + 0.1 * diversity * sample_size + 10 * penalty * sample_size)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    metrics = W2vBertCriterion.reduce_metrics([log])
    assert metrics["mlm_accuracy"] == pytest.approx(log["mlm_correct"] / sample_size, abs=1e-5)


def test_backbone_only_weights_get_fresh_heads_with_one_warning(caplog):
    torch.manual_seed(0)
    source = W2vBertModel(TINY).state_dict()
    backbone = {k: v for k, v in source.items() if k.split(".")[0] not in PRETRAINING_HEADS}
    target = W2vBertModel(TINY)
    fresh = {k: v.clone() for k, v in target.state_dict().items() if k.split(".")[0] in PRETRAINING_HEADS}
    with caplog.at_level(logging.WARNING):
        target.load_state_dict(backbone, strict=True)
    warnings = [r.getMessage() for r in caplog.records if "pretraining heads" in r.getMessage()]
    assert len(warnings) == 1 and f"their {len(fresh)} tensors" in warnings[0] and "quantizer" in warnings[0]
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())
    assert all(torch.equal(loaded[k], v) for k, v in fresh.items())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        target.load_state_dict(source, strict=True)  # a full state dict: no warning, its heads
    assert not caplog.records and torch.equal(target.quantizer.vars, source["quantizer.vars"])
    target.remove_pretraining_modules()  # fine-tuning: the heads go, a pretraining state dict still loads
    target.load_state_dict(source, strict=True)
    with pytest.raises(ValueError, match="features_only"):
        target(**_batch()["net_input"])


def test_continued_yaml_is_w2v_bert_2_0_with_fairseq2s_objective():
    cfg = finalize_config(compose_config(CONFIG_DIR, "w2v_bert_2_0_continued",
                                         ["task.data=/x", "checkpoint.save_dir=/y"]))
    hf = transformers.Wav2Vec2BertConfig()  # HF's defaults are facebook/w2v-bert-2.0's sizes
    for name, value in hf_w2v_bert_config_kwargs(cfg.model).items():
        if name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                    "conv_depthwise_kernel_size", "left_max_position_embeddings", "right_max_position_embeddings",
                    "feature_projection_input_dim", "position_embeddings_type"):
            assert getattr(hf, name) == value, name
    m = cfg.model
    assert (m.encoder_layers - m.num_bert_encoder_layers, m.latent_groups, m.latent_vars, m.latent_dim,
            m.final_dim, m.num_negatives, m.logit_temp, m.mask_prob, m.mask_length, tuple(m.latent_temp)) == (
        8, 1, 1024, 1024, 768, 100, 0.1, 0.65, 10, (2.0, 0.1, 0.999995))
    assert (cfg.criterion._name, list(cfg.criterion.loss_weights), cfg.task.normalize) == ("w2v_bert", [0.1, 10], False)
    with torch.device("meta"):
        model = W2vBertModel(m)
        hf_params = sum(p.numel() for p in transformers.Wav2Vec2BertModel(hf).parameters())
    counts = {head: sum(p.numel() for p in getattr(model, head).parameters()) for head in PRETRAINING_HEADS}
    assert sum(p.numel() for p in model.parameters()) - sum(counts.values()) == hf_params  # 580M as HF's
    assert counts == {"quantizer": 161 * 1024 + 1024 * 1024, "project_q": 1025 * 768, "final_proj": 1025 * 768,
                      "mlm_proj": 1025 * 1024}
    with pytest.raises(ConfigError, match="encoder_layerdrop"):
        finalize_config(compose_config(CONFIG_DIR, "w2v_bert_2_0_continued",
                                       ["task.data=/x", "checkpoint.save_dir=/y", "model.encoder_layerdrop=0.1"]))
