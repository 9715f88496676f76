"""ConformerEncoder (abs / rel_pos / rope) against HF transformers' Wav2Vec2Conformer layers, fp32, with padding."""

import pytest
import torch
from transformers.models.wav2vec2_conformer import modeling_wav2vec2_conformer as hf

from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.huggingface import conformer_layer_to_hf
from fairseq_lite.modules.conformer_encoder import ConformerEncoder
from test_conformer_modules import DIM, FFN, HEADS, KERNEL, batch_with_padding, hf_config, randomise


def encoder_args(pos_enc_type, layer_norm_first, **overrides):
    """The arguments ConformerEncoder documents, and nothing else."""
    args = dict(
        embed_dim=DIM, num_layers=3, ffn_dim=FFN, num_heads=HEADS, dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.0, activation_fn="gelu", layer_norm_first=layer_norm_first, layerdrop=0.0,
        conv_pos=8, conv_pos_groups=4, pos_conv_depth=1, required_seq_len_multiple=2, max_positions=100000,
        depthwise_conv_kernel_size=KERNEL, attn_type="espnet", pos_enc_type=pos_enc_type,
    )
    args.update(overrides)
    return args


def hf_layers_from(ours, pos_enc_type):
    config = hf_config(pos_enc_type)
    config.num_hidden_layers = len(ours.layers)
    theirs = hf.Wav2Vec2ConformerEncoder(config).eval()
    for ours_layer, their_layer in zip(ours.layers, theirs.layers):
        their_layer.load_state_dict(conformer_layer_to_hf(ours_layer.state_dict()))
    theirs.layer_norm.load_state_dict(ours.layer_norm.state_dict())
    return theirs


def run_hf_layers(theirs, x, padding_mask):
    """HF's conformer layer loop (positions from HF's own modules), returning every layer's output."""
    positions = theirs.embed_positions(x) if theirs.embed_positions is not None else None
    additive = torch.zeros(padding_mask.shape).masked_fill(padding_mask, torch.finfo(torch.float32).min)
    outputs = []
    for layer in theirs.layers:
        x = layer(x, attention_mask=additive[:, None, None, :], relative_position_embeddings=positions)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope"])
def test_pre_ln_encoder_matches_hf_encoder(pos_enc_type):
    """layer_norm_first (the Large layout) is the layout HF's Wav2Vec2ConformerEncoder implements end to end."""
    ours = ConformerEncoder(**encoder_args(pos_enc_type, layer_norm_first=True)).eval()
    randomise(ours)
    theirs = hf_layers_from(ours, pos_enc_type)
    x, padding_mask = batch_with_padding(length=13)  # odd: fairseq's conformer does not pad time here
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o)) for layer in theirs.layers]
    with torch.no_grad():
        out, layer_results = ours(x.clone(), padding_mask)
        expected = theirs(x.clone(), attention_mask=~padding_mask).last_hidden_state
    for hook in hooks:
        hook.remove()
    assert len(layer_results) == len(captured) == 3
    for (layer_out, _, _), their_out in zip(layer_results, captured):
        assert (layer_out - their_out).abs().max() <= 1e-5
    assert (out - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope"])
def test_post_ln_encoder_matches_hf_layers(pos_enc_type):
    """Base layout: the encoder input is layer-normed, the output is not (fairseq); HF layers on LN(x) agree."""
    ours = ConformerEncoder(**encoder_args(pos_enc_type, layer_norm_first=False)).eval()
    randomise(ours)
    theirs = hf_layers_from(ours, pos_enc_type)
    x, padding_mask = batch_with_padding(length=13)
    with torch.no_grad():
        out, layer_results = ours(x, padding_mask)
        expected = run_hf_layers(theirs, ours.layer_norm(x.masked_fill(padding_mask[..., None], 0.0)), padding_mask)
    for (layer_out, _, _), their_out in zip(layer_results, expected):
        assert (layer_out - their_out).abs().max() <= 1e-5
    assert (out - expected[-1]).abs().max() <= 1e-5


def test_abs_encoder_adds_pos_conv_then_runs_conformer_layers():
    ours = ConformerEncoder(**encoder_args("abs", layer_norm_first=False)).eval()
    randomise(ours)
    theirs = hf_layers_from(ours, "abs")
    x, padding_mask = batch_with_padding(length=14)  # even: no time padding to required_seq_len_multiple
    with torch.no_grad():
        out, _ = ours(x, padding_mask)
        zeroed = x.masked_fill(padding_mask[..., None], 0.0)
        positioned = zeroed + ours.pos_conv(zeroed.transpose(1, 2)).transpose(1, 2)
        expected = run_hf_layers(theirs, ours.layer_norm(positioned), padding_mask)[-1]
    assert (out - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("pos_enc_type", ["abs", "rel_pos", "rope"])
def test_encoder_trains_and_keeps_pos_conv_keys(pos_enc_type):
    """All three variants build, run forward+backward in training mode (dropout, layerdrop, BatchNorm updates)
    and keep fairseq's pos_conv weights in the state dict."""
    torch.manual_seed(0)
    encoder = ConformerEncoder(**encoder_args(pos_enc_type, layer_norm_first=False, layerdrop=0.2)).train()
    keys = set(encoder.state_dict())
    assert {"pos_conv.0.weight_g", "pos_conv.0.weight_v", "pos_conv.0.bias", "layer_norm.weight"} <= keys
    assert "layers.2.conv_module.batch_norm.running_var" in keys
    x, padding_mask = batch_with_padding(length=15)
    x.requires_grad_(True)
    out, _ = encoder(x, padding_mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out[~padding_mask].pow(2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad[~padding_mask].abs().sum() > 0
    assert encoder.layers[0].conv_module.batch_norm.num_batches_tracked.item() in (0, 1)


def test_encoder_layer_choice_and_bad_pos_enc_type():
    encoder = ConformerEncoder(**encoder_args("abs", layer_norm_first=True, attn_type=""))
    assert "layers.0.self_attn.q_proj.weight" in encoder.state_dict()  # fairseq MHA inside conformer layers
    with pytest.raises(ConfigError, match="pos_enc_type"):
        ConformerEncoder(**encoder_args("alibi", layer_norm_first=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_keeps_dtype(dtype):
    for pos_enc_type in ("rel_pos", "rope"):
        encoder = ConformerEncoder(**encoder_args(pos_enc_type, layer_norm_first=True)).eval().to(dtype)
        x, padding_mask = batch_with_padding(length=9)
        with torch.no_grad():
            out, _ = encoder(x.to(dtype), padding_mask)
        assert out.dtype == dtype and torch.isfinite(out).all()
