"""wav2vec 2.0 conformer models end to end: HF ``Wav2Vec2Conformer*`` parity, key/config maps, yamls, training."""

import os

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerForPreTraining

from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.huggingface import (
    hf_conformer_config_kwargs,
    wav2vec2_conformer_config_from_hf,
    wav2vec2_conformer_from_hf_state_dict,
    wav2vec2_conformer_to_hf_state_dict,
)
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq_lite.modules.conformer_encoder import ConformerEncoder
from test_conformer_modules import randomise

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "config", "pretraining")


def tiny_cfg(pos_enc_type, **overrides):
    fields = dict(
        extractor_mode="layer_norm", conv_bias=True, layer_norm_first=True,
        conv_feature_layers="[(16, 10, 5)] + [(16, 3, 2)] * 2", encoder_layers=2, encoder_embed_dim=32,
        encoder_ffn_embed_dim=48, encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4,
        depthwise_conv_kernel_size=7, layer_type="conformer", attn_type="espnet", pos_enc_type=pos_enc_type,
        quantize_targets=True, final_dim=12, latent_vars=5, latent_groups=2, num_negatives=4,
        mask_prob=0.5, mask_length=2,
    )
    fields.update(overrides)
    return Wav2Vec2Config(**fields)


def hf_model(cfg, ours):
    """HF's pretraining model with our weights, using its eager (non-SDPA) attention for independence."""
    config = Wav2Vec2ConformerConfig(**hf_conformer_config_kwargs(cfg))
    config._attn_implementation = "eager"
    theirs = Wav2Vec2ConformerForPreTraining(config).eval()
    theirs.load_state_dict(wav2vec2_conformer_to_hf_state_dict(ours.state_dict()), strict=True)
    return theirs


def audio_batch():
    torch.manual_seed(3)
    source = torch.randn(2, 1600)
    padding_mask = torch.zeros(2, 1600, dtype=torch.bool)
    padding_mask[1, 1100:] = True
    return source.masked_fill(padding_mask, 0.0), padding_mask


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope"])
def test_model_matches_hf_wav2vec2_conformer(pos_enc_type):
    """CNN features, every conformer layer and the encoder output equal HF's to 1e-5 (fp32, padded batch)."""
    cfg = tiny_cfg(pos_enc_type)
    ours = Wav2Vec2Model(cfg).eval()
    assert isinstance(ours.encoder, ConformerEncoder)
    randomise(ours)
    theirs = hf_model(cfg, ours)

    source, padding_mask = audio_batch()
    captured = []
    for layer in theirs.wav2vec2_conformer.encoder.layers:
        layer.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        out = ours(source, padding_mask, mask=False, features_only=True)
        expected = theirs.wav2vec2_conformer(source, attention_mask=(~padding_mask).long())
    assert (out["features"] - expected.extract_features).abs().max() <= 1e-5
    assert len(out["layer_results"]) == len(captured) == cfg.encoder_layers
    valid = ~out["padding_mask"]
    for (layer_out, _, _), their_out in zip(out["layer_results"], captured):
        assert (layer_out - their_out).abs().max() <= 1e-5
    assert (out["x"] - expected.last_hidden_state).abs().max() <= 1e-5
    assert valid.sum() < valid.numel()  # the batch really was padded


def test_quantizer_codevectors_match_hf_in_eval():
    cfg = tiny_cfg("rope")
    ours = Wav2Vec2Model(cfg).eval()
    randomise(ours)
    theirs = hf_model(cfg, ours)
    features = torch.randn(2, 7, 16)
    with torch.no_grad():
        q = ours.quantizer(features, produce_targets=False)["x"]
        expected, _ = theirs.quantizer(features)
    assert (q - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("pos_enc_type", ["rel_pos", "rope"])
def test_hf_round_trip_of_keys_and_config(pos_enc_type):
    cfg = tiny_cfg(pos_enc_type)
    ours = Wav2Vec2Model(cfg)
    state = ours.state_dict()
    back = wav2vec2_conformer_from_hf_state_dict(wav2vec2_conformer_to_hf_state_dict(state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)

    hf_config = Wav2Vec2ConformerConfig(**hf_conformer_config_kwargs(cfg))
    theirs = Wav2Vec2ConformerForPreTraining(hf_config)
    rebuilt = Wav2Vec2Model(Wav2Vec2Config(**wav2vec2_conformer_config_from_hf(hf_config)))
    rebuilt.load_state_dict(wav2vec2_conformer_from_hf_state_dict(theirs.state_dict()), strict=True)
    assert rebuilt.cfg.pos_enc_type == pos_enc_type and rebuilt.cfg.layer_norm_first


def test_hf_export_refuses_layouts_hf_cannot_run():
    with pytest.raises(ConfigError, match="layer_norm_first"):
        hf_conformer_config_kwargs(tiny_cfg("rel_pos", layer_norm_first=False))
    with pytest.raises(ConfigError, match="pos_enc_type"):
        hf_conformer_config_kwargs(tiny_cfg("abs"))


@pytest.mark.parametrize("name,layers,dim,ln_first", [
    ("wav2vec2_conformer_base_librispeech", 12, 768, False),
    ("wav2vec2_conformer_large_librivox", 24, 1024, True),
])
def test_conformer_pretraining_yamls_load(name, layers, dim, ln_first):
    cfg = finalize_config(compose_config(CONFIG_DIR, name, ["task.data=/tmp/manifest"]))
    model = cfg.model
    assert (model.layer_type, model.attn_type, model.pos_enc_type) == ("conformer", "espnet", "rel_pos")
    assert (model.encoder_layers, model.encoder_embed_dim, model.layer_norm_first) == (layers, dim, ln_first)
    assert cfg.criterion.infonce and cfg.optimizer.weight_decay == 0.01


@pytest.mark.parametrize("pos_enc_type", ["abs", "rel_pos", "rope"])
def test_a_few_steps_lower_the_contrastive_loss(pos_enc_type):
    """Each variant trains: Adam steps on one batch (fixed masks and negatives) lower the InfoNCE loss."""
    torch.manual_seed(0)
    cfg = tiny_cfg(pos_enc_type, layer_norm_first=False, extractor_mode="default", conv_bias=False,
                   dropout=0.0, attention_dropout=0.0)
    model = Wav2Vec2Model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    source, padding_mask = audio_batch()
    losses = []
    for _ in range(8):
        np.random.seed(0)
        torch.manual_seed(0)
        net_output = model(source, padding_mask)
        logits = model.get_logits(net_output).float()
        loss = torch.nn.functional.cross_entropy(logits, model.get_targets(None, net_output))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
