"""Conformer building blocks against HF transformers' Wav2Vec2Conformer modules (random weights, fp32)."""

import pytest
import torch
from transformers import Wav2Vec2ConformerConfig
from transformers.models.wav2vec2_conformer import modeling_wav2vec2_conformer as hf

from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.huggingface import conformer_layer_to_hf
from fairseq_lite.modules.conformer_layer import ConformerWav2Vec2EncoderLayer
from fairseq_lite.modules.espnet_multihead_attention import RelPositionMultiHeadedAttention
from fairseq_lite.modules.positional_encoding import RelPositionalEncoding
from fairseq_lite.modules.rotary_positional_embedding import RotaryPositionalEmbedding

DIM, HEADS, FFN, KERNEL = 32, 4, 48, 7
HF_POS = {"rel_pos": "relative", "rope": "rotary", "abs": None}


def hf_config(pos_enc_type):
    config = Wav2Vec2ConformerConfig(
        hidden_size=DIM,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        num_hidden_layers=1,
        hidden_act="swish",
        conv_depthwise_kernel_size=KERNEL,
        position_embeddings_type=HF_POS[pos_enc_type],
        max_source_positions=64,
    )
    config._attn_implementation = "eager"
    return config


def batch_with_padding(length=13):
    torch.manual_seed(0)
    x = torch.randn(3, length, DIM)
    lengths = torch.tensor([length, length - 4, 5])
    padding_mask = torch.arange(length)[None, :] >= lengths[:, None]
    return x, padding_mask


def randomise(module):
    """Give every parameter and BatchNorm statistic a random value, so nothing matches by accident."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.3)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)


def test_rel_positional_encoding_matches_hf():
    ours = RelPositionalEncoding(max_len=100000, d_model=DIM)
    theirs = hf.Wav2Vec2ConformerRelPositionalEmbedding(hf_config("rel_pos"))
    for length in (5, 17, 3):  # growing and shrinking lengths reuse the cached table
        x = torch.zeros(2, length, DIM)
        expected = theirs(x)[0]
        assert ours(x).shape == (2 * length - 1, DIM)
        torch.testing.assert_close(ours(x), expected, atol=1e-6, rtol=0)
    assert not list(ours.state_dict())


def test_rotary_tables_match_hf_and_follow_dtype():
    ours = RotaryPositionalEmbedding(DIM // HEADS)
    theirs = hf.Wav2Vec2ConformerRotaryPositionalEmbedding(hf_config("rope"))
    torch.testing.assert_close(ours.inv_freq, theirs.inv_freq)
    cos, sin = ours(11, torch.float32, torch.device("cpu"))
    expected = theirs(torch.zeros(1, 11, DIM))
    torch.testing.assert_close(cos, expected[0, :, 0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, expected[1, :, 0, 0], atol=1e-6, rtol=0)
    # a half-precision module still gets fp32-accurate tables, returned in the requested dtype
    ours.half()
    cos16, sin16 = ours(3000, torch.bfloat16, torch.device("cpu"))
    assert cos16.dtype == torch.bfloat16
    cos32, _ = RotaryPositionalEmbedding(DIM // HEADS)(3000, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(cos16.float(), cos32, atol=8e-3, rtol=0)


def test_rel_shift_indexes_relative_positions():
    length = 4
    # scores[i, c] = c encodes the column; column c is relative position (length-1-c)
    scores = torch.arange(2 * length - 1).float().expand(1, 1, length, -1)
    shifted = RelPositionMultiHeadedAttention.rel_shift(scores)
    i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    assert torch.equal(shifted[0, 0], (length - 1 - i + j).float())
    assert RelPositionMultiHeadedAttention.rel_shift(torch.ones(1, 1, 1, 1)).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope", "abs"])
def test_conformer_layer_matches_hf(pos_enc_type):
    config = hf_config(pos_enc_type)
    theirs = hf.Wav2Vec2ConformerEncoderLayer(config).eval()
    ours = ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, dropout=0.1, depthwise_conv_kernel_size=KERNEL,
                                         attn_type="espnet", pos_enc_type=pos_enc_type).eval()
    randomise(ours)
    hf_state = conformer_layer_to_hf(ours.state_dict())
    missing, unexpected = theirs.load_state_dict(hf_state, strict=False)
    assert not missing and not unexpected

    x, padding_mask = batch_with_padding()
    position_emb, hf_positions = None, None
    if pos_enc_type == "rel_pos":
        position_emb = RelPositionalEncoding(100000, DIM)(x)
        hf_positions = hf.Wav2Vec2ConformerRelPositionalEmbedding(config)(x)
    elif pos_enc_type == "rope":
        hf_positions = hf.Wav2Vec2ConformerRotaryPositionalEmbedding(config)(x)
    additive = torch.zeros(padding_mask.shape).masked_fill(padding_mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out, ffn_out = ours(x, padding_mask, position_emb=position_emb)
        expected = theirs(x, attention_mask=additive[:, None, None, :], relative_position_embeddings=hf_positions)
    assert ffn_out.shape == x.shape
    assert (out - expected).abs().max() <= 1e-5


def test_conformer_layer_state_dict_keys_are_fairseqs():
    layer = ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, 0.0, KERNEL, "espnet", "rel_pos")
    keys = set(layer.state_dict())
    for key in ("ffn1.layer_norm.weight", "ffn1.w_1.weight", "ffn1.w_2.bias", "self_attn_layer_norm.weight",
                "self_attn.linear_q.weight", "self_attn.linear_out.bias", "self_attn.linear_pos.weight",
                "self_attn.pos_bias_u", "self_attn.pos_bias_v", "conv_module.layer_norm.weight",
                "conv_module.pointwise_conv1.weight", "conv_module.depthwise_conv.weight",
                "conv_module.batch_norm.running_mean", "conv_module.batch_norm.num_batches_tracked",
                "conv_module.pointwise_conv2.weight", "ffn2.w_1.weight", "final_layer_norm.bias"):
        assert key in keys
    assert "self_attn.linear_pos.bias" not in keys and "conv_module.pointwise_conv1.bias" not in keys
    assert layer.conv_module.depthwise_conv.weight.shape == (DIM, 1, KERNEL)
    rope = ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, 0.0, KERNEL, "espnet", "rope")
    assert rope.state_dict()["self_attn.rotary_emb.inv_freq"].shape == (DIM // HEADS // 2,)


def test_bad_conformer_options_raise_config_errors():
    with pytest.raises(ConfigError, match="odd"):
        ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, 0.0, 30, "espnet", "abs")
    with pytest.raises(ConfigError, match="pos_enc_type"):
        ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, 0.0, KERNEL, "espnet", "alibi")
    with pytest.raises(ConfigError, match="attn_type=espnet"):
        ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, 0.0, KERNEL, "", "rope")


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope"])
def test_padding_never_reaches_valid_frames_through_attention(pos_enc_type):
    """Changing padded frames must not change attention outputs at valid frames."""
    attn = ConformerWav2Vec2EncoderLayer(DIM, FFN, HEADS, 0.0, KERNEL, "espnet", pos_enc_type).self_attn.eval()
    x, padding_mask = batch_with_padding()
    pos = RelPositionalEncoding(100000, DIM)(x) if pos_enc_type == "rel_pos" else None
    noisy = x.masked_fill(padding_mask[..., None], 1e3)
    with torch.no_grad():
        a = attn(x, key_padding_mask=padding_mask, pos_emb=pos)
        b = attn(noisy, key_padding_mask=padding_mask, pos_emb=pos)
    valid = ~padding_mask
    torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=0)
