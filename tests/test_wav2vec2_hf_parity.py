"""Numerical parity with Hugging Face Transformers' wav2vec 2.0 (an independent implementation).

HF models are built from configs with random weights (nothing is downloaded), mapped into ours with
``fairseq_lite.interop.huggingface`` and compared in fp32 on a padded batch.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fairseq_lite  # noqa: E402,F401
from fairseq_lite.errors import ConfigError  # noqa: E402
from fairseq_lite.interop.huggingface import (  # noqa: E402
    hf_config_kwargs,
    wav2vec2_config_from_hf,
    wav2vec2_from_hf_state_dict,
    wav2vec2_to_hf_state_dict,
)
from fairseq_lite.models import build_model  # noqa: E402
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config  # noqa: E402

LAYOUTS = {
    "group_norm_post_ln": dict(extractor_mode="default", layer_norm_first=False, conv_bias=False),
    "layer_norm_pre_ln": dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True),
}


def pair(layout):
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(quantize_targets=True, final_dim=16, encoder_layers=3, encoder_embed_dim=32,
                         encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                         conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 3 + [(24, 2, 2)]",
                         conv_pos=16, conv_pos_groups=4, latent_vars=12, **LAYOUTS[layout])
    hf = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**hf_config_kwargs(cfg))).eval()
    ours = build_model(wav2vec2_config_from_hf(hf.config)).eval()
    ours.load_state_dict(wav2vec2_from_hf_state_dict(hf.state_dict()), strict=True)
    return hf, ours


def batch():
    torch.manual_seed(1)
    source = torch.randn(2, 6000)
    padding = torch.zeros(2, 6000, dtype=torch.bool)
    padding[1, 4100:] = True
    return source.masked_fill(padding, 0.0), padding


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_features_and_every_layer_match_hf(layout):
    hf, ours = pair(layout)
    source, padding = batch()
    layer_outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: layer_outputs.append(o[0] if isinstance(o, tuple) else o))
             for layer in hf.wav2vec2.encoder.layers]
    with torch.no_grad():
        assert (hf.wav2vec2.feature_extractor(source) - ours.feature_extractor(source)).abs().max() <= 1e-5
        theirs = hf.wav2vec2(source, attention_mask=(~padding).long()).last_hidden_state
        mine = ours.extract_features(source, padding)
    for hook in hooks:
        hook.remove()
    valid = ~mine["padding_mask"]
    assert valid[1].sum() < valid[0].sum()  # the batch really has padding
    assert len(layer_outputs) == len(mine["layer_results"]) == 3
    for theirs_layer, (mine_layer, _, _) in zip(layer_outputs, mine["layer_results"]):
        assert (theirs_layer - mine_layer)[valid].abs().max() <= 1e-5
    assert (theirs - mine["x"])[valid].abs().max() <= 1e-5


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_quantizer_codevectors_match_hf_in_eval(layout):
    hf, ours = pair(layout)
    torch.manual_seed(2)
    features = torch.randn(2, 7, 24)
    with torch.no_grad():
        theirs, _ = hf.quantizer(features)
        mine = ours.quantizer(features)["x"]
    assert (theirs - mine).abs().max() <= 1e-6
    with torch.no_grad():  # and the projection heads map the same way
        assert torch.allclose(hf.project_q(theirs), ours.project_q(mine), atol=1e-6)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_key_map_round_trips(layout):
    hf, ours = pair(layout)
    hf_state = hf.state_dict()
    back = wav2vec2_to_hf_state_dict(ours.state_dict())
    assert set(back) == set(hf_state)
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)
    bare = transformers.Wav2Vec2Model(hf.config)
    mapped = wav2vec2_to_hf_state_dict(
        {k: v for k, v in ours.state_dict().items() if not k.startswith(("quantizer", "project_q", "final_proj"))},
        hf_prefix="",
    )
    bare.load_state_dict(mapped, strict=True)


def test_legacy_weight_norm_names_from_hf_are_accepted():
    hf, ours = pair("group_norm_post_ln")
    legacy = {}
    for key, value in hf.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        legacy[key.replace("parametrizations.weight.original1", "weight_v")] = value
    state = wav2vec2_from_hf_state_dict(legacy)
    assert "encoder.pos_conv.0.weight_g" in state and "encoder.pos_conv.0.weight_v" in state
    ours.load_state_dict(state, strict=True)


def square_pair():
    """Our model whose CNN is as wide as its encoder (no post_extract_proj, as in the demo) and HF's twin."""
    torch.manual_seed(0)
    fields = dict(quantize_targets=True, final_dim=16, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                  encoder_attention_heads=4, conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 3 + [(32, 2, 2)]",
                  conv_pos=16, conv_pos_groups=4, latent_vars=12)
    ours = build_model({"_name": "wav2vec2", **fields}).eval()
    hf_config = transformers.Wav2Vec2Config(**hf_config_kwargs(Wav2Vec2Config(**fields)))
    hf = transformers.Wav2Vec2ForPreTraining(hf_config).eval()
    return ours, hf


def test_a_model_without_post_extract_proj_maps_to_an_identity_projection_and_back():
    ours, hf = square_pair()
    assert ours.post_extract_proj is None
    hf.load_state_dict(wav2vec2_to_hf_state_dict(ours.state_dict()), strict=True)
    projection = hf.wav2vec2.feature_projection.projection
    assert torch.equal(projection.weight, torch.eye(32)) and not projection.bias.any()
    source, padding = batch()
    with torch.no_grad():
        theirs = hf.wav2vec2(source, attention_mask=(~padding).long()).last_hidden_state
        mine = ours.extract_features(source, padding)
    valid = ~mine["padding_mask"]
    assert (theirs - mine["x"])[valid].abs().max() <= 1e-5
    back = wav2vec2_from_hf_state_dict(hf.state_dict())
    assert set(back) == set(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_a_square_projection_that_is_not_the_identity_is_refused():
    ours, hf = square_pair()
    hf.load_state_dict(wav2vec2_to_hf_state_dict(ours.state_dict()), strict=True)
    with torch.no_grad():
        hf.wav2vec2.feature_projection.projection.bias[0] = 0.5
    with pytest.raises(ConfigError) as caught:
        wav2vec2_from_hf_state_dict(hf.state_dict())
    assert str(caught.value) == (
        "the feature projection is 32x32 (CNN width == hidden size) but not the identity: fairseq's wav2vec 2.0 has "
        "no post_extract_proj at this shape, so it cannot be represented")
