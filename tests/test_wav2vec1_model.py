"""wav2vec 1.0 / vq-wav2vec model ``wav2vec``: config, fairseq state-dict keys, predictions, quantizers, training."""

import dataclasses
import math

import pytest
import torch

import fairseq_lite  # noqa: F401  (registers everything)
from fairseq_lite.criterions import build_criterion
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.models import build_model
from fairseq_lite.models.wav2vec.wav2vec import Wav2VecConfig, parse_conv_layers, receptive_field_offset
from fairseq_lite.modules.kmeans_vector_quantizer import KmeansVectorQuantizer

FEAT = "[(32, 10, 5), (32, 8, 4), (32, 4, 2), (32, 4, 2), (32, 4, 2)]"  # stride 160, offset auto = 3
AGG = "[(32, 2, 1), (32, 3, 1), (48, 4, 1)]"


def tiny(**overrides):
    cfg = {"_name": "wav2vec", "conv_feature_layers": FEAT, "conv_aggregator_layers": AGG,
           "prediction_steps": 4, "num_negatives": 5, "infonce": False}
    cfg.update(overrides)
    return build_model(cfg)


def test_config_has_fairseq_fields_and_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(Wav2VecConfig)}
    assert defaults["prediction_steps"] == 12 and defaults["sample_distance"] is None
    assert defaults["num_negatives"] == 10 and defaults["cross_sample_negatives"] == 0
    assert defaults["skip_connections_agg"] is True and defaults["log_compression"] is True
    assert defaults["skip_connections_feat"] is False and defaults["residual_scale"] == 0.5
    assert defaults["offset"] == "auto" and defaults["aggregator"] == "cnn" and defaults["gru_dim"] == 512
    assert defaults["vq_type"] == "none" and defaults["vq_vars"] == 320 and defaults["vq_groups"] == 2
    assert defaults["vq_dim"] == 0 and defaults["vq_depth"] == 1 and defaults["vq_gamma"] == 0.25
    assert tuple(defaults["vq_temp"]) == (2.0, 0.5, 0.999995) and defaults["infonce"] == "${criterion.infonce}"
    assert defaults["project_features"] == "none" and defaults["activation"] == "relu"
    feature_layers = parse_conv_layers(defaults["conv_feature_layers"], "conv_feature_layers")
    assert len(feature_layers) == 8 and feature_layers[0] == (512, 10, 5)
    assert [k for _, k, _ in parse_conv_layers(defaults["conv_aggregator_layers"], "x")] == list(range(2, 14))
    assert receptive_field_offset(feature_layers) == 3  # ceil(465 / 160)


def test_state_dict_keys_and_shapes_follow_fairseq():
    model = tiny(no_conv_bias=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["feature_extractor.conv_layers.0.0.weight"] == (32, 1, 10)
    assert shapes["feature_extractor.conv_layers.0.2.weight"] == (32,)  # GroupNorm(1 group)
    assert "feature_extractor.conv_layers.0.0.bias" not in shapes
    assert shapes["feature_aggregator.conv_layers.2.1.weight"] == (48, 32, 4)
    assert shapes["feature_aggregator.conv_layers.2.1.bias"] == (48,)
    assert shapes["feature_aggregator.conv_layers.2.3.weight"] == (48,)
    # 1×1 residual projection only where the width changes, indexed by layer
    assert [k for k in shapes if "residual_proj" in k] == ["feature_aggregator.residual_proj.2.weight"]
    assert shapes["feature_aggregator.residual_proj.2.weight"] == (48, 32, 1)
    assert shapes["wav2vec_predictions.project_to_steps.weight"] == (48, 32, 1, 4)
    assert shapes["wav2vec_predictions.project_to_steps.bias"] == (32,)
    assert model.offset == 3

    gumbel = tiny(vq_type="gumbel", activation="gelu", vq_depth=2, combine_groups=True, vq_vars=10)
    vq = {k: tuple(v.shape) for k, v in gumbel.state_dict().items() if k.startswith("vector_quantizer.")}
    assert vq == {"vector_quantizer.vars": (1, 10, 16),  # combined groups: one shared set
                  "vector_quantizer.weight_proj.0.0.weight": (64, 32), "vector_quantizer.weight_proj.0.0.bias": (64,),
                  "vector_quantizer.weight_proj.1.weight": (20, 64), "vector_quantizer.weight_proj.1.bias": (20,)}
    kmeans = tiny(vq_type="kmeans", vq_vars=10)
    vq = {k: tuple(v.shape) for k, v in kmeans.state_dict().items() if k.startswith("vector_quantizer.")}
    assert vq == {"vector_quantizer.embedding": (10, 2, 16), "vector_quantizer.projection.0.weight": (32, 16, 1),
                  "vector_quantizer.projection.1.weight": (32,), "vector_quantizer.projection.1.bias": (32,)}
    gru = tiny(aggregator="gru", gru_dim=24)
    assert tuple(gru.state_dict()["feature_aggregator.1.weight_ih_l0"].shape) == (72, 32)
    assert tuple(gru.state_dict()["wav2vec_predictions.project_to_steps.weight"].shape) == (24, 32, 1, 4)


def test_forward_idx_shape_with_default_feature_extractor():
    """commands.md's Python API: 10,000 samples, 2 groups → indices [1, 60, 2]."""
    for vq_type in ("gumbel", "kmeans"):
        model = build_model({"_name": "wav2vec", "infonce": False, "vq_type": vq_type, "vq_vars": 8,
                             "conv_aggregator_layers": "[(16, 2, 1)]"}).eval()
        z = model.feature_extractor(torch.randn(1, 10000))
        assert z.shape == (1, 512, 60)
        quantized, idxs = model.vector_quantizer.forward_idx(z)
        assert idxs.shape == (1, 60, 2) and quantized.shape == z.shape
        assert int(idxs.min()) >= 0 and int(idxs.max()) < 8
        assert model.feature_aggregator(z).shape == (1, 16, 60)


def test_infonce_logits_score_predictions_against_true_future_features():
    torch.manual_seed(0)
    model = tiny(infonce=True).eval()
    source = torch.randn(2, 8000)
    out = model(source)
    z = model.feature_extractor(source)
    bsz, _, tsz = z.shape
    rows = sum(bsz * (tsz - model.offset - i) for i in range(4))
    assert out["cpc_logits"].shape == (rows, 6) and out["cpc_targets"].shape == (rows,)
    assert int(out["cpc_targets"].abs().sum()) == 0
    # column 0 = <prediction for step i at frame t, true feature at t + offset + i>
    c = model.feature_aggregator(z)
    preds = model.wav2vec_predictions.project_to_steps(c.unsqueeze(-1))  # B×C×T×steps
    expected = torch.cat([torch.einsum("bct,bct->tb", preds[..., : tsz - model.offset - i, i],
                                       z[..., model.offset + i:]).reshape(-1) for i in range(4)])
    torch.testing.assert_close(out["cpc_logits"][:, 0], expected, rtol=1e-4, atol=1e-4)


def test_binary_logits_labels_and_balanced_weights():
    model = tiny(balanced_classes=True).eval()
    out = model(torch.randn(2, 8000))
    labels, weights = out["cpc_targets"]
    logits = model.get_logits(out)
    assert logits.shape == labels.shape == weights.shape and logits.dim() == 1
    positives = int(labels.sum())
    assert positives * 6 == labels.numel()  # one positive per 5 negatives
    assert torch.equal(model.get_targets({}, out), labels)
    assert torch.all(weights[labels == 1] == 1) and torch.allclose(weights[labels == 0], torch.tensor(0.2))
    assert model.get_target_weights(labels, out) is weights
    assert tiny().get_target_weights(None, tiny()(torch.randn(1, 8000))) is None


def _frame_ids(bsz, tsz):
    """Features whose single channel holds a global frame id b·T + t."""
    return torch.arange(bsz * tsz, dtype=torch.float).view(bsz, 1, tsz)


def test_negatives_come_from_other_frames_of_the_same_utterance():
    model = tiny(num_negatives=20)
    y = _frame_ids(3, 30)
    negatives = model.wav2vec_predictions.sample_negatives(y)  # K×B×C×T
    assert negatives.shape == (20, 3, 1, 30)
    ids = negatives[:, :, 0, :].long()
    own = y[:, 0, :].long().unsqueeze(0)
    assert not torch.any(ids == own)
    assert torch.all(ids // 30 == torch.arange(3).view(1, 3, 1))  # same utterance


def test_sample_distance_and_cross_sample_negatives():
    near = tiny(num_negatives=10, sample_distance=2).wav2vec_predictions.sample_negatives(_frame_ids(2, 40))
    ids = near[:, :, 0, :].long()
    frame = torch.arange(40).view(1, 1, 40) + torch.tensor([0, 40]).view(1, 2, 1)
    distance = (ids - frame).abs()
    assert torch.all((distance >= 1) & (distance <= 2))
    cross = tiny(num_negatives=2, cross_sample_negatives=30).wav2vec_predictions.sample_negatives(_frame_ids(4, 10))
    assert cross.shape == (32, 4, 1, 10)
    ids = cross[2:, :, 0, :].long()
    assert not torch.any(ids == _frame_ids(4, 10)[:, 0, :].long().unsqueeze(0))
    assert torch.any(ids // 10 != torch.arange(4).view(1, 4, 1))  # some come from other utterances


def test_aggregator_convolutions_are_causal_for_both_paddings():
    """Each aggregator conv sees only current and past frames (padding kernel−1 on the left; the GroupNorm
    over C×T that follows it is fairseq's and does mix statistics over time)."""
    for zero_pad, pad_type in ((False, "ReplicationPad1d"), (True, "ConstantPad1d")):
        agg = tiny(agg_zero_pad=zero_pad).feature_aggregator.eval()
        for block in agg.conv_layers:
            assert type(block[0]).__name__ == pad_type
            z = torch.randn(1, block[1].in_channels, 20)
            changed = z.clone()
            changed[..., 12:] += 5.0
            pad_and_conv = block[:2]
            a, b = pad_and_conv(z), pad_and_conv(changed)
            assert a.shape[-1] == 20
            torch.testing.assert_close(a[..., :12], b[..., :12])
            assert not torch.allclose(a[..., 12:], b[..., 12:])
        if zero_pad:  # the first frame of a zero-padded conv sees zeros before it, not copies of itself
            block = agg.conv_layers[0]
            start = torch.randn(1, 32, 1).expand(1, 32, 5)
            conv = block[1]
            expected = conv(torch.cat([torch.zeros(1, 32, 1), start], dim=-1))[..., 0]
            torch.testing.assert_close(block[:2](start)[..., 0], expected)


def test_skip_connections_add_the_scaled_residual():
    agg = tiny(residual_scale=0.25).feature_aggregator.eval()
    z = torch.randn(1, 32, 16)
    blocks, scale = agg.conv_layers, math.sqrt(0.25)
    x1 = (blocks[0](z) + z) * scale
    x2 = (blocks[1](x1) + x1) * scale
    x3 = (blocks[2](x2) + agg.residual_proj[2](x2)) * scale  # width 32 → 48 goes through the 1×1 projection
    torch.testing.assert_close(agg(z), x3)
    plain = tiny(skip_connections_agg=False).feature_aggregator
    assert len([m for m in plain.residual_proj if m is not None]) == 0
    torch.testing.assert_close(plain(z), plain.conv_layers(z))

    extractor = tiny(skip_connections_feat=True, log_compression=False, residual_scale=0.25).feature_extractor
    x = torch.randn(1, 4000)
    h = extractor.conv_layers[0](x.unsqueeze(1))  # 1 → 32 channels: no skip
    for block in extractor.conv_layers[1:]:
        out = block(h)
        h = (out + h[..., :: h.size(2) // out.size(2)][..., : out.size(2)]) * scale
    torch.testing.assert_close(extractor(x), h)


def test_log_compression_is_log_abs_plus_one():
    model = tiny()
    plain = tiny(log_compression=False)
    plain.load_state_dict(model.state_dict())
    source = torch.randn(1, 4000)
    torch.testing.assert_close(model.feature_extractor(source), torch.log(plain.feature_extractor(source).abs() + 1))


def test_project_features_same_shares_the_aggregator_and_new_builds_one():
    same = tiny(project_features="same")
    assert same.project_features is same.feature_aggregator
    new = tiny(project_features="new", conv_aggregator_layers="[(32, 2, 1), (32, 3, 1)]")
    assert new.project_features is not new.feature_aggregator
    assert any(k.startswith("project_features.conv_layers.") for k in new.state_dict())
    assert new(torch.randn(1, 8000))["cpc_logits"].numel() > 0


def test_kmeans_quantizer_picks_nearest_codeword_and_trains_codebook():
    torch.manual_seed(0)
    vq = KmeansVectorQuantizer(dim=8, num_vars=5, groups=2, combine_groups=False, vq_dim=8, time_first=False)
    x = torch.randn(3, 8, 7, requires_grad=True)
    out = vq(x, produce_targets=True)
    ze = vq.projection(x).view(3, 2, 4, 7).permute(0, 3, 1, 2)  # B×T×G×D
    distances = ((ze.unsqueeze(3) - vq.embedding.transpose(0, 1).view(1, 1, 2, 5, 4)) ** 2).sum(-1)
    assert torch.equal(out["targets"], distances.argmin(-1))
    chosen = vq.embedding[out["targets"], torch.arange(2)]  # B×T×G×D
    torch.testing.assert_close(out["x"], chosen.reshape(3, 7, 8).transpose(1, 2))
    (out["x"].sum() + out["kmeans_loss"]).backward()
    assert vq.embedding.grad.abs().sum() > 0 and x.grad.abs().sum() > 0  # straight-through to the encoder
    shared = KmeansVectorQuantizer(dim=8, num_vars=5, groups=2, combine_groups=True, vq_dim=8, time_first=True)
    assert shared.embedding.shape == (5, 1, 4)
    assert shared.forward_idx(torch.randn(2, 6, 8))[1].shape == (2, 6, 2)
    with pytest.raises(ConfigError, match="vq_dim"):
        KmeansVectorQuantizer(dim=8, num_vars=5, groups=2, combine_groups=False, vq_dim=4, time_first=False)


def test_gumbel_temperature_follows_updates_and_extra_losses():
    model = tiny(vq_type="gumbel", vq_vars=10, vq_temp="(2,0.5,0.99)")
    model.set_num_updates(10)
    assert model.vector_quantizer.curr_temp == pytest.approx(2 * 0.99 ** 10)
    out = model(torch.randn(2, 8000))
    assert out["num_vars"] == 20 and out["temp"] == pytest.approx(2 * 0.99 ** 10)
    torch.testing.assert_close(model.get_extra_losses(out), 20 - out["prob_perplexity"])
    kmeans = tiny(vq_type="kmeans", vq_vars=10)
    out = kmeans(torch.randn(2, 8000))
    assert model.get_extra_losses({}) is None and kmeans.get_extra_losses(out) is out["kmeans_loss"]


@pytest.mark.parametrize("variant", [
    {"infonce": False},
    {"infonce": True},
    {"infonce": False, "vq_type": "gumbel", "vq_vars": 16, "activation": "gelu", "vq_depth": 2,
     "combine_groups": True},
    {"infonce": True, "vq_type": "kmeans", "vq_vars": 16, "loss_weights": [1.0]},
    {"infonce": False, "aggregator": "gru", "gru_dim": 32, "balanced_classes": True},
], ids=["binary", "infonce", "vq-gumbel", "vq-kmeans", "gru-balanced"])
def test_a_few_updates_lower_the_loss(variant):
    torch.manual_seed(0)
    variant = dict(variant)
    criterion_cfg = {"_name": "wav2vec", "infonce": variant["infonce"], "loss_weights": variant.pop("loss_weights", None)}
    model = tiny(**variant)
    criterion = build_criterion(criterion_cfg, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sample = {"id": torch.arange(2), "net_input": {"source": torch.randn(2, 8000)}}
    history = []
    for _ in range(15):
        torch.manual_seed(1)  # the same negatives every step: the loss change is the model's doing
        loss, sample_size, log = criterion(model, sample)
        optimizer.zero_grad()
        (loss / sample_size).backward()
        optimizer.step()
        history.append(log)
    first, last = history[0], history[-1]
    assert last["loss"] < 0.95 * first["loss"], [h["loss"] for h in history]
    terms = [k for k in first if k.startswith("loss_")]
    assert terms == (["loss_0", "loss_1"] if criterion_cfg["loss_weights"] else [])
    for term in terms:  # the contrastive loss and the k-means latent + commitment term each go down
        assert last[term] < first[term], (term, first[term], last[term])


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="infonce"):
        build_model({"_name": "wav2vec", "infonce": "${criterion.infonce}"} | {"conv_feature_layers": FEAT})
    with pytest.raises(ConfigError, match="conv_feature_layers"):
        tiny(conv_feature_layers="[(32, 10)]")
    with pytest.raises(ConfigError, match="offset"):
        tiny(offset="soon")
    with pytest.raises(DataError, match="min_sample_size"):
        tiny()(torch.randn(1, 600))  # 3 frames: nothing left to predict at offset 3
    with pytest.raises(ConfigError, match="enable_padding"):
        tiny()(torch.randn(2, 8000), padding_mask=torch.ones(2, 8000, dtype=torch.bool))
