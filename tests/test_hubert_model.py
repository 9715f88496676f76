"""The hubert model, criterion and hubert_ctc: fairseq's compute_nce, frame/label alignment, padding, the
criterion's sums and logged keys, old key names, and the wrong-family checkpoint errors."""

import math
import types

import pytest
import torch
import torch.nn.functional as F

from fairseq_lite.criterions.hubert_criterion import HubertCriterion
from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.models.hubert.hubert import HubertConfig, HubertModel, label_logits
from fairseq_lite.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig

TINY = dict(label_rate=50, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
            encoder_attention_heads=2, final_dim=16, conv_feature_layers="[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2",
            conv_pos=16, conv_pos_groups=4, mask_prob=0.8)
K = 12


def tiny_model(**changes):
    torch.manual_seed(0)
    return HubertModel(HubertConfig(**{**TINY, **changes}), [K], 16000)


def batch(padded=True):
    torch.manual_seed(1)
    source = torch.randn(2, 16000)
    padding_mask = torch.zeros(2, 16000, dtype=torch.bool)
    if padded:
        padding_mask[1, 11000:] = True
    return source, padding_mask, [torch.randint(4, K, (2, 50))]


def fairseq_compute_nce(x, pos, negs, logit_temp):
    """fairseq's HubertModel.compute_nce, as written there (torch.cosine_similarity against [pos; negs])."""
    neg_is_pos = (pos == negs).all(-1)
    targets = torch.cat([pos.unsqueeze(0), negs], dim=0)
    logits = torch.cosine_similarity(x.float(), targets.float(), dim=-1).type_as(x) / logit_temp
    if neg_is_pos.any():
        logits[1:][neg_is_pos] = float("-inf")
    return logits.transpose(0, 1)


def test_label_logits_equal_fairseqs_compute_nce():
    torch.manual_seed(0)
    embs = torch.randn(K, 16)
    embs[5] = embs[7]  # two identical class embeddings: both are "the positive" for either label
    x, targets = torch.randn(30, 16), torch.randint(0, K, (30,))
    expected = fairseq_compute_nce(x, embs[targets], embs.unsqueeze(1).expand(-1, 30, -1), 0.1)
    ours = label_logits(x, targets, embs, 0.1)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(ours[finite], expected[finite], atol=1e-5)


def test_frames_follow_the_labels_and_padding():
    model = tiny_model()
    source, padding_mask, targets = batch()
    out = model(source, targets, padding_mask)
    frame_padding = out["padding_mask"]
    assert frame_padding.shape == (2, 49) and frame_padding[0].sum() == 0 and frame_padding[1].sum() == 15
    rows = out["logit_m_list"][0].size(0) + out["logit_u_list"][0].size(0)
    assert rows == int((~frame_padding).sum())  # every unpadded frame is scored once, padded ones never
    assert out["logit_m_list"][0].size(1) == K + 1
    short = [targets[0][:, :30]]  # labels cover fewer frames: the features are cropped to them (label_rate 50)
    assert model(source, short, padding_mask)["padding_mask"].size(1) == 30


def test_extract_features_output_layer_is_one_based():
    model = tiny_model().eval()
    source, padding_mask, _ = batch()
    first, mask = model.extract_features(source, padding_mask, output_layer=1)
    features = model(source, padding_mask=padding_mask, mask=False, features_only=True)
    assert torch.allclose(first, features["layer_results"][0][0])
    last, _ = model.extract_features(source, padding_mask)
    assert torch.allclose(last, features["x"]) and mask.shape == (2, 49)


def test_criterion_sums_and_logs_as_fairseq():
    model = tiny_model()
    source, padding_mask, targets = batch()
    sample = {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding_mask},
              "target_list": targets}
    criterion = HubertCriterion(pred_masked_weight=1.0, pred_nomask_weight=0.5, loss_weights=[10.0])
    torch.manual_seed(3)
    loss, sample_size, log = criterion(model, sample)
    torch.manual_seed(3)
    out = model(source, targets, padding_mask)
    masked = F.cross_entropy(out["logit_m_list"][0].float(), torch.zeros(out["logit_m_list"][0].size(0), dtype=torch.long),
                             reduction="sum")
    unmasked = F.cross_entropy(out["logit_u_list"][0].float(), torch.zeros(out["logit_u_list"][0].size(0), dtype=torch.long),
                               reduction="sum")
    frames = out["logit_m_list"][0].size(0) + out["logit_u_list"][0].size(0)
    penalty = 10.0 * out["features_pen"].float() * frames
    assert sample_size == frames
    assert loss.item() == pytest.approx((masked + 0.5 * unmasked + penalty).item(), rel=1e-5)
    assert log["loss_m_0"] == pytest.approx(masked.item(), rel=1e-5)
    assert log["loss_features_pen"] == pytest.approx(penalty.item(), rel=1e-5)
    assert log["count_m_0"] == out["logit_m_list"][0].size(0) and 0 <= log["correct_m_0"] <= log["count_m_0"]
    metrics = HubertCriterion.reduce_metrics([log])
    assert metrics["loss"] == pytest.approx(loss.item() / sample_size / math.log(2), abs=1e-3)
    assert metrics["correct_m_0"] == pytest.approx(log["correct_m_0"] / log["count_m_0"], abs=1e-5)
    loss.backward()
    assert model.label_embs_concat.grad is not None


def test_skipped_frames_with_a_weight_are_a_config_error():
    model = tiny_model(skip_masked=True)
    source, padding_mask, targets = batch()
    sample = {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding_mask},
              "target_list": targets}
    with pytest.raises(ConfigError, match="skip_masked"):
        HubertCriterion(pred_masked_weight=1.0)(model, sample)


def test_the_old_label_embs_name_loads():
    model = tiny_model()
    state = model.state_dict()
    state["label_embs"] = state.pop("label_embs_concat")
    fresh = tiny_model()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.label_embs_concat, model.label_embs_concat)


def _pretraining_file(tmp_path, model, name="hubert"):
    cfg = {"model": {**vars(model.cfg), "_name": name},
           "task": {"_name": "hubert_pretraining", "normalize": False, "data": str(tmp_path), "sample_rate": 16000,
                    "label_rate": 50}}
    path = tmp_path / f"{name}.pt"
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    return str(path)


def _ctc_config(path, **changes):
    return HubertCtcConfig(_name="hubert_ctc", w2v_path=path, normalize=False, data="", **changes)


def test_hubert_ctc_fine_tunes_from_a_hubert_checkpoint_and_keeps_fairseqs_keys(tmp_path):
    pretrained = tiny_model()
    path = _pretraining_file(tmp_path, pretrained)
    task = types.SimpleNamespace(target_dictionary=list(range(9)))
    model = HubertCtc.build_model(_ctc_config(path), task)
    inner = model.w2v_encoder.w2v_model
    assert torch.equal(inner.encoder.layers[0].fc1.weight, pretrained.encoder.layers[0].fc1.weight)
    keys = set(model.state_dict())
    assert "w2v_encoder.proj.weight" in keys and "w2v_encoder.w2v_model.label_embs_concat" in keys
    assert not any(k.startswith("w2v_encoder.w2v_model.final_proj") for k in keys)
    source, padding_mask, _ = batch()
    out = model(source=source, padding_mask=padding_mask)
    assert out["encoder_out"].shape == (49, 2, 9)
    reloaded = HubertCtc.build_model(_ctc_config(path, w2v_args=model.cfg.w2v_args), task)
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(reloaded.w2v_encoder.proj.weight, model.w2v_encoder.proj.weight)


def test_wrong_family_checkpoints_name_the_model_to_use(tmp_path):
    from fairseq_lite.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

    path = _pretraining_file(tmp_path, tiny_model())
    task = types.SimpleNamespace(target_dictionary=list(range(9)))
    with pytest.raises(CheckpointError, match="'hubert' pretraining model, not a wav2vec2 one.*model._name=hubert_ctc"):
        Wav2VecCtc.build_model(Wav2Vec2CtcConfig(_name="wav2vec_ctc", w2v_path=path, normalize=False, data=""), task)
    w2v_path = _pretraining_file(tmp_path, tiny_model(), name="wav2vec2")
    with pytest.raises(CheckpointError, match="'wav2vec2' pretraining model, not a hubert one.*wav2vec_ctc"):
        HubertCtc.build_model(_ctc_config(w2v_path), task)
