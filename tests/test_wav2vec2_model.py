"""The ``wav2vec2`` model: fairseq's state-dict layout, parameter counts, forward semantics, training."""

import pytest
import torch

import fairseq_lite  # noqa: F401  (registers everything)
from fairseq_lite.criterions import build_criterion
from fairseq_lite.errors import ConfigError
from fairseq_lite.models import build_model
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config

BASE = {"_name": "wav2vec2", "quantize_targets": True, "final_dim": 256, "encoder_layerdrop": 0.05,
        "dropout_input": 0.1, "dropout_features": 0.1, "feature_grad_mult": 0.1, "encoder_embed_dim": 768}
LARGE = {"_name": "wav2vec2", "quantize_targets": True, "extractor_mode": "layer_norm", "layer_norm_first": True,
         "final_dim": 768, "latent_temp": [2.0, 0.1, 0.999995], "encoder_layerdrop": 0.0, "dropout_input": 0.0,
         "dropout_features": 0.0, "dropout": 0.0, "attention_dropout": 0.0, "conv_bias": True, "encoder_layers": 24,
         "encoder_embed_dim": 1024, "encoder_ffn_embed_dim": 4096, "encoder_attention_heads": 16,
         "feature_grad_mult": 1.0}


def tiny(**overrides):
    cfg = dict(_name="wav2vec2", quantize_targets=True, final_dim=16, encoder_layers=2, encoder_embed_dim=32,
               encoder_ffn_embed_dim=64, encoder_attention_heads=4,
               conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 2", conv_pos=16, conv_pos_groups=4,
               latent_vars=10, num_negatives=5)
    cfg.update(overrides)
    return build_model(cfg)


def test_parameter_counts_and_state_dict_of_base_and_large():
    with torch.device("meta"):
        base = build_model(BASE)
        large = build_model(LARGE)
    assert sum(p.numel() for p in base.parameters()) == 95_044_608
    assert sum(p.numel() for p in large.parameters()) == 317_390_592
    shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    expected = {
        "mask_emb": (768,),
        "feature_extractor.conv_layers.0.0.weight": (512, 1, 10),
        "feature_extractor.conv_layers.0.2.weight": (512,),
        "feature_extractor.conv_layers.4.0.weight": (512, 512, 3),
        "feature_extractor.conv_layers.6.0.weight": (512, 512, 2),
        "post_extract_proj.weight": (768, 512),
        "quantizer.vars": (1, 640, 128),
        "quantizer.weight_proj.weight": (640, 512),
        "project_q.weight": (256, 256),
        "encoder.pos_conv.0.bias": (768,),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (768, 48, 128),
        "encoder.layers.11.self_attn.k_proj.weight": (768, 768),
        "encoder.layers.11.self_attn_layer_norm.weight": (768,),
        "encoder.layers.11.fc1.weight": (3072, 768),
        "encoder.layers.11.fc2.weight": (768, 3072),
        "encoder.layers.11.final_layer_norm.bias": (768,),
        "encoder.layer_norm.weight": (768,),
        "layer_norm.weight": (512,),
        "final_proj.weight": (256, 768),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert len([k for k in shapes if k.startswith("feature_extractor.")]) == 9  # 7 convs + group norm w/b
    large_keys = large.state_dict()
    assert large_keys["feature_extractor.conv_layers.6.2.1.weight"].shape == (512,)
    assert large_keys["feature_extractor.conv_layers.6.0.bias"].shape == (512,)
    assert large_keys["quantizer.vars"].shape == (1, 640, 384)
    assert large_keys["encoder.pos_conv.0.weight_v"].shape == (1024, 64, 128)


def test_config_has_fairseq_defaults_and_rejects_unsupported_layer_type():
    cfg = Wav2Vec2Config()
    assert (cfg.mask_prob, cfg.mask_length, cfg.num_negatives, cfg.latent_vars, cfg.latent_groups) == (0.65, 10, 100, 320, 2)
    assert tuple(cfg.latent_temp) == (2, 0.5, 0.999995) and cfg.required_seq_len_multiple == 2
    assert cfg.pos_enc_type == "abs" and cfg.depthwise_conv_kernel_size == 31 and cfg.fp16 is False
    with pytest.raises(ConfigError, match="trf_adp"):
        tiny(layer_type="trf_adp")
    with pytest.raises(ConfigError, match="mask_prb"):
        build_model({"_name": "wav2vec2", "mask_prb": 0.5})


def test_pretraining_forward_shapes_padding_and_extra_losses():
    torch.manual_seed(0)
    model = tiny(cross_sample_negatives=2, codebook_negatives=3)
    source = torch.randn(3, 4000)
    padding = torch.zeros(3, 4000, dtype=torch.bool)
    padding[1, 3000:] = True
    out = model(source, padding)
    logits = out["x"]
    assert logits.shape[0] == 1 + 5 + 2 + 3 and logits.shape[1] == 3
    assert model.get_logits(out).shape == (logits.shape[1] * logits.shape[2], 11)
    assert torch.equal(model.get_targets(None, out), torch.zeros(logits.shape[1] * logits.shape[2], dtype=torch.long))
    frames = model.feature_extractor.output_lengths(torch.tensor(3000))
    assert out["padding_mask"][1].sum() == out["padding_mask"].shape[1] - frames
    diversity, pen = model.get_extra_losses(out)
    assert 0 <= diversity.item() < 1 and pen.item() > 0


def test_features_only_layer_and_feature_grad_mult_zero():
    torch.manual_seed(0)
    model = tiny(feature_grad_mult=0.0).eval()
    source = torch.randn(2, 4000)
    full = model.extract_features(source)
    assert full["x"].shape == (2, 199, 32) and len(full["layer_results"]) == 2
    first = model.extract_features(source, layer=0)
    assert torch.allclose(first["x"], full["layer_results"][0][0])
    assert len(first["layer_results"]) == 1
    quantized, codes = model.quantize(source)
    assert quantized.shape == (2, 199, 16) and codes.shape == (2, 199, 2) and int(codes.max()) < 10
    model.train()
    out = model(source)
    out["x"].float().sum().backward()
    assert all(p.grad is None for p in model.feature_extractor.parameters())
    assert model.final_proj.weight.grad is not None


def test_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    # layer-norm CNN: the group-norm CNN normalises over time, padding included (as in fairseq)
    model = tiny(extractor_mode="layer_norm").eval()
    source = torch.randn(2, 4000)
    padding = torch.zeros(2, 4000, dtype=torch.bool)
    padding[1, 3000:] = True
    batched = model.extract_features(source.masked_fill(padding, 0.0), padding)["x"]
    alone = model.extract_features(source[1:, :3000])["x"]
    assert torch.allclose(batched[1, : alone.shape[1]], alone[0], atol=1e-5)


def test_set_num_updates_reaches_the_quantizer_and_remove_pretraining_modules():
    model = tiny(latent_temp=[2.0, 0.5, 0.5])
    model.set_num_updates(1)
    assert model.quantizer.curr_temp == 1.0
    state = model.state_dict()
    model.remove_pretraining_modules(last_layer=0)
    assert model.quantizer is None and model.final_proj is None and len(model.encoder.layers) == 1
    fresh = tiny()
    fresh.remove_pretraining_modules()
    fresh.load_state_dict(state, strict=True)  # quantizer/project_q/final_proj keys are accepted


def test_apply_mask_puts_mask_emb_on_frames_and_zeros_whole_channels():
    torch.manual_seed(0)
    model = tiny(mask_channel_prob=0.5, mask_channel_length=4)
    x = torch.randn(3, 60, 32) + 5.0
    padding = torch.zeros(3, 60, dtype=torch.bool)
    padding[2, 40:] = True
    masked, mask = model.apply_mask(x, padding)
    assert not (mask & padding).any() and (mask.sum(1) == mask.sum(1)[0]).all()
    zero_channels = (masked == 0).all(dim=1)  # B×C: channels zeroed at every frame
    assert zero_channels.any(dim=1).all()
    keep = ~zero_channels.unsqueeze(1).expand_as(masked)
    frames = mask.unsqueeze(-1).expand_as(masked)
    expected = model.mask_emb.expand_as(masked)
    assert torch.equal(masked[frames & keep], expected[frames & keep])
    assert torch.equal(masked[~frames & keep], x[~frames & keep])


def test_logits_are_cosine_over_temperature_with_minus_inf_for_copies_of_the_positive():
    model = tiny(logit_temp=0.5)
    x = torch.randn(1, 3, 16)
    y = torch.randn(1, 3, 16)
    negatives = torch.randn(2, 1, 3, 16)
    negatives[1, 0, 2] = y[0, 2]
    logits = model.compute_preds(x, y, negatives)
    assert logits.shape == (3, 1, 3)
    assert torch.allclose(logits[0], torch.cosine_similarity(x, y, dim=-1) / 0.5)
    assert logits[2, 0, 2] == float("-inf") and torch.isfinite(logits[:, 0, :2]).all()


def test_model_options_run():
    torch.manual_seed(0)
    source = torch.randn(2, 4000)
    for options in ({"negatives_from_everywhere": True}, {"quantize_targets": False}, {"quantize_input": True},
                    {"target_glu": True, "mask_channel_prob": 0.3, "mask_channel_length": 4},
                    {"mask_channel_prob": 0.3, "mask_channel_length": 4, "mask_channel_before": True},
                    {"layer_norm_first": True, "extractor_mode": "layer_norm", "conv_bias": True},
                    {"pos_conv_depth": 2, "crop_seq_to_multiple": 4}):
        out = tiny(**options)(source)
        assert torch.isfinite(out["x"][0]).all(), options


def test_activation_checkpointing_gives_the_same_gradients_and_layerdrop_skips_layers():
    source = torch.randn(2, 4000)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = tiny(checkpoint_activations=flag)
        torch.manual_seed(1)
        model(source, mask=False, features_only=True)["x"].pow(2).mean().backward()
        grads.append(model.encoder.layers[0].fc1.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    model = tiny(encoder_layerdrop=1.0).train()
    assert model(source, mask=False, features_only=True)["layer_results"] == []
    assert len(model.eval()(source, mask=False, features_only=True)["layer_results"]) == 2


def test_bf16_forward():
    torch.manual_seed(0)
    model = tiny().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.extract_features(torch.randn(2, 4000))
    assert torch.isfinite(out["x"]).all()


def test_a_few_steps_lower_the_contrastive_loss():
    torch.manual_seed(0)
    model = tiny(dropout=0.0, attention_dropout=0.0)
    criterion = build_criterion({"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10],
                                 "log_keys": ["prob_perplexity", "code_perplexity", "temp"]}, None)
    source = torch.randn(4, 4000)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(step % 3)  # a fixed cycle of masks and negatives
        loss, sample_size, log = criterion(model, {"net_input": {"source": source}, "id": torch.arange(4)})
        optimizer.zero_grad()
        (loss / sample_size).backward()
        optimizer.step()
        losses.append(criterion.reduce_metrics([log])["loss"])
    assert sum(losses[-3:]) < sum(losses[:3])


def test_on_xla_every_frame_is_scored_and_the_criterion_counts_only_the_masked_ones(monkeypatch):
    """fairseq's TPU path, run here by making the model take its features for XLA tensors: the logits cover every
    frame (static shapes), the positives of the masked frames equal the usual path's, and the criterion's loss,
    sample size and accuracy count the masked frames only (the mask as frame weights, no host read)."""
    from fairseq_lite.models.wav2vec import wav2vec2

    torch.manual_seed(0)
    model = tiny(quantize_targets=False).eval()
    source = torch.randn(2, 4000)
    frames = model(source, features_only=True)["x"].shape[1]
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[0, 2:6] = mask[1, 5:9] = True
    shrunk = model(source, mask_indices=mask)["x"]
    monkeypatch.setattr(wav2vec2, "is_xla_tensor", lambda tensor: True)
    torch.manual_seed(1)
    kept = model(source, mask_indices=mask)
    assert kept["x"].shape == (1 + 5, 2, frames)
    torch.testing.assert_close(kept["x"][0][mask], shrunk[0].reshape(-1))

    rows = model.get_logits(kept)[mask.t().reshape(-1)]  # get_logits orders its rows frame-major
    expected_loss = torch.nn.functional.cross_entropy(rows, torch.zeros(8, dtype=torch.long), reduction="sum")
    expected_correct = int(((rows.argmax(-1) == 0) & (rows.argmin(-1) != 0)).sum())
    crit = build_criterion({"_name": "wav2vec", "infonce": True, "loss_weights": [10]}, None)  # features_pen
    torch.manual_seed(1)  # the same distractors
    _, sample_size, log = crit(model, {"net_input": {"source": source, "mask_indices": mask}, "id": torch.arange(2)})
    assert float(sample_size) == 8 and float(log["count"]) == 8
    assert float(log["correct"]) == expected_correct
    assert float(log["loss_0"]) == pytest.approx(float(expected_loss.detach()), rel=1e-6)
