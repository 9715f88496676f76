"""Hugging Face Transformers ↔ fairseq_lite for wav2vec 2.0: state-dict key maps and config maps.

The key map is the one HF's own fairseq converter uses (``post_extract_proj`` ↔
``feature_projection.projection``, ``quantizer.vars`` ↔ ``quantizer.codevectors``, ``final_proj`` ↔
``project_hid`` …); where fairseq has no ``post_extract_proj`` (CNN width == ``encoder_embed_dim``), HF's
always-present projection is exported as the identity with zero bias and mapped back to none. Backbone keys
carry HF's model prefix (``wav2vec2.`` in ``Wav2Vec2ForPreTraining``/``ForCTC``, none in ``Wav2Vec2Model``);
the pretraining heads never do. Per-layer names go through a
pluggable function so the conformer layers (``Wav2Vec2Conformer*``) reuse the rest of the map.
Transformers is imported only by the config helpers (``pip install fairseq_lite[hf]``). Reading and writing
HF folders and checkpoint files is ``interop/hf_files.py``.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from fairseq_lite.dataclass import safe_eval
from fairseq_lite.errors import ConfigError

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
KeyMap = Callable[[str], str]

# ---------------------------------------------------------------------------------------------------
# wav2vec 2.0 transformer layers (Wav2Vec2EncoderLayer / Wav2Vec2EncoderLayerStableLayerNorm)

#: fairseq → HF renames inside one encoder layer (names relative to ``encoder.layers.{n}.``).
_TRANSFORMER_LAYER_RENAMES = (
    ("self_attn_layer_norm.", "layer_norm."),
    ("self_attn.", "attention."),
    ("fc1.", "feed_forward.intermediate_dense."),
    ("fc2.", "feed_forward.output_dense."),
    ("final_layer_norm.", "final_layer_norm."),
)


def transformer_layer_key_to_hf(key: str) -> str:
    """fairseq name inside a transformer layer → HF name."""
    for ours, theirs in _TRANSFORMER_LAYER_RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"unexpected wav2vec 2.0 layer key '{key}'")


def transformer_layer_key_from_hf(key: str) -> str:
    """HF name inside a transformer layer → fairseq name."""
    for ours, theirs in _TRANSFORMER_LAYER_RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    raise KeyError(f"unexpected Hugging Face wav2vec 2.0 layer key '{key}'")


# ---------------------------------------------------------------------------------------------------
# Everything outside the layers

#: fairseq → HF for keys outside the encoder layers; ``{P}`` is HF's backbone prefix.
_TOP_LEVEL_RENAMES = (
    ("mask_emb", "{P}masked_spec_embed"),
    ("layer_norm.", "{P}feature_projection.layer_norm."),
    ("post_extract_proj.", "{P}feature_projection.projection."),
    ("encoder.pos_conv.0.weight_g", "{P}encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "{P}encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", "{P}encoder.pos_conv_embed.conv.bias"),
    ("encoder.layer_norm.", "{P}encoder.layer_norm."),
    ("quantizer.vars", "quantizer.codevectors"),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_q.", "project_q."),
    ("final_proj.", "project_hid."),
)
_LEGACY_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}

_OUR_CONV = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)$")
_HF_CONV = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def wav2vec2_to_hf_state_dict(state_dict: StateDict, hf_prefix: str = "wav2vec2.",
                              layer_key_to_hf: KeyMap = transformer_layer_key_to_hf) -> StateDict:
    """Our ``Wav2Vec2Model`` state dict → HF names (``Wav2Vec2ForPreTraining`` with the default prefix,
    ``Wav2Vec2Model`` with ``hf_prefix=""``). Weight-norm tensors get PyTorch's parametrization names."""
    out: StateDict = {}
    for key, value in _with_identity_projection(state_dict).items():
        out[_key_to_hf(key, hf_prefix, layer_key_to_hf)] = value
    return out


_PROJECTION = "post_extract_proj."


def _with_identity_projection(state_dict: StateDict) -> StateDict:
    """The state dict with an identity ``post_extract_proj`` (zero bias) where it has none.

    fairseq builds no ``post_extract_proj`` when the CNN width equals ``encoder_embed_dim``; HF's
    ``feature_projection`` (layer_norm -> projection -> dropout) always has one. An identity matrix times
    the layer-normed features gives them back bit for bit, so the exported model computes the same."""
    if _PROJECTION + "weight" in state_dict or "layer_norm.weight" not in state_dict:
        return state_dict
    norm = state_dict["layer_norm.weight"]
    identity = torch.eye(norm.numel(), dtype=norm.dtype)
    return {**state_dict, _PROJECTION + "weight": identity, _PROJECTION + "bias": torch.zeros_like(norm)}


def _without_identity_projection(state_dict: StateDict) -> StateDict:
    """The inverse of ``_with_identity_projection`` on an imported state dict: a square projection (CNN width ==
    hidden size) exists in fairseq only as 'no post_extract_proj', which is exact for an identity with zero
    bias; any other square projection has no fairseq equivalent (ConfigError)."""
    weight, bias = state_dict.get(_PROJECTION + "weight"), state_dict.get(_PROJECTION + "bias")
    if weight is None or weight.shape[0] != weight.shape[1]:
        return state_dict
    identity = torch.eye(weight.shape[0], dtype=weight.dtype)
    if not torch.equal(weight, identity) or (bias is not None and bool(bias.any())):
        raise ConfigError(
            f"the feature projection is {weight.shape[0]}x{weight.shape[1]} (CNN width == hidden size) but not the "
            "identity: fairseq's wav2vec 2.0 has no post_extract_proj at this shape, so it cannot be represented")
    return {k: v for k, v in state_dict.items() if not k.startswith(_PROJECTION)}


def _key_to_hf(key: str, prefix: str, layer_key_to_hf: KeyMap) -> str:
    conv = _OUR_CONV.match(key)
    if conv:
        index, part, name = conv.groups()
        return f"{prefix}feature_extractor.conv_layers.{index}.{'conv' if part == '0' else 'layer_norm'}.{name}"
    layer = _LAYER.match(key)
    if layer:
        return f"{prefix}encoder.layers.{layer.group(1)}.{layer_key_to_hf(layer.group(2))}"
    for ours, theirs in _TOP_LEVEL_RENAMES:
        if key == ours or (ours.endswith(".") and key.startswith(ours)):
            return theirs.format(P=prefix) + key[len(ours):]
    raise KeyError(f"no Hugging Face name for wav2vec 2.0 key '{key}'")


def wav2vec2_from_hf_state_dict(hf_state_dict: StateDict, hf_prefix: Optional[str] = None,
                                layer_key_from_hf: KeyMap = transformer_layer_key_from_hf) -> StateDict:
    """HF wav2vec 2.0 state dict → our names. The backbone prefix is detected (``wav2vec2.`` or none);
    legacy ``weight_g``/``weight_v`` and parametrization spellings are both accepted; heads that are not
    part of a pretraining model (``lm_head``, ``dropout_features`` …) are rejected with a KeyError. A square
    feature projection must be the identity (it becomes no ``post_extract_proj``)."""
    if hf_prefix is None:
        hf_prefix = "wav2vec2." if any(k.startswith("wav2vec2.") for k in hf_state_dict) else ""
    second_conv_norm = hf_prefix + "feature_extractor.conv_layers.1.layer_norm."
    layer_norm_mode = any(k.startswith(second_conv_norm) for k in hf_state_dict)
    inverse = [(theirs.format(P=hf_prefix), ours) for ours, theirs in _TOP_LEVEL_RENAMES]
    out: StateDict = {}
    for key, value in hf_state_dict.items():
        for legacy, modern in _LEGACY_WEIGHT_NORM.items():
            if key.endswith("pos_conv_embed.conv." + legacy):
                key = key[: -len(legacy)] + modern
        out[_key_from_hf(key, hf_prefix, inverse, layer_norm_mode, layer_key_from_hf)] = value
    return _without_identity_projection(out)


def _key_from_hf(key: str, prefix: str, inverse, layer_norm_mode: bool, layer_key_from_hf: KeyMap) -> str:
    body = key[len(prefix):] if prefix and key.startswith(prefix) else key
    conv = _HF_CONV.match(body)
    if conv:
        index, part, name = conv.groups()
        slot = "0" if part == "conv" else ("2.1" if layer_norm_mode else "2")
        return f"feature_extractor.conv_layers.{index}.{slot}.{name}"
    layer = _LAYER.match(body)
    if layer:
        return f"encoder.layers.{layer.group(1)}.{layer_key_from_hf(layer.group(2))}"
    for theirs, ours in inverse:
        if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
            return ours + key[len(theirs):]
    raise KeyError(f"no fairseq name for Hugging Face wav2vec 2.0 key '{key}'")


# ---------------------------------------------------------------------------------------------------
# Configs

def hf_config_kwargs(cfg: Any) -> Dict[str, Any]:
    """Keyword arguments for ``transformers.Wav2Vec2Config`` describing the same network as our
    ``Wav2Vec2Config`` ``cfg`` (architecture, dropouts, masking and contrastive settings)."""
    final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
    return dict(
        _backbone_config_kwargs(cfg),
        feat_quantizer_dropout=cfg.dropout_features,
        num_codevectors_per_group=cfg.latent_vars,
        num_codevector_groups=cfg.latent_groups,
        codevector_dim=cfg.latent_dim if cfg.latent_dim > 0 else final_dim,
        proj_codevector_dim=final_dim,
        contrastive_logits_temperature=cfg.logit_temp,
        num_negatives=cfg.num_negatives,
    )


def _backbone_config_kwargs(cfg: Any) -> Dict[str, Any]:
    """The HF config keyword arguments of the CNN + transformer (shared by HF's wav2vec2 and HuBERT configs)."""
    layers = safe_eval(cfg.conv_feature_layers)
    return dict(
        hidden_size=cfg.encoder_embed_dim,
        num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads,
        intermediate_size=cfg.encoder_ffn_embed_dim,
        hidden_act=str(cfg.activation_fn),
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        feat_proj_dropout=cfg.dropout_input,
        layerdrop=cfg.encoder_layerdrop,
        layer_norm_eps=1e-5,
        feat_extract_norm="layer" if str(cfg.extractor_mode) == "layer_norm" else "group",
        feat_extract_activation="gelu",
        conv_dim=[c for c, _, _ in layers],
        conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers],
        conv_bias=cfg.conv_bias,
        num_conv_pos_embeddings=cfg.conv_pos,
        num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        do_stable_layer_norm=cfg.layer_norm_first,
        mask_time_prob=cfg.mask_prob,
        mask_time_length=cfg.mask_length,
        mask_feature_prob=cfg.mask_channel_prob,
        mask_feature_length=cfg.mask_channel_length,
    )


def wav2vec2_config_from_hf(hf_config: Any) -> Dict[str, Any]:
    """Our ``wav2vec2`` model config (a dict with ``_name``) for a ``transformers.Wav2Vec2Config``."""
    return {
        "_name": "wav2vec2",
        **_backbone_config_from_hf(hf_config),
        "dropout_features": hf_config.feat_quantizer_dropout,
        "final_dim": hf_config.proj_codevector_dim,
        "logit_temp": hf_config.contrastive_logits_temperature,
        "quantize_targets": True,
        "latent_vars": hf_config.num_codevectors_per_group,
        "latent_groups": hf_config.num_codevector_groups,
        "latent_dim": hf_config.codevector_dim,
        "num_negatives": hf_config.num_negatives,
    }


def _backbone_config_from_hf(hf_config: Any) -> Dict[str, Any]:
    """The model-config fields of the CNN + transformer that HF's wav2vec2 and HuBERT configs share."""
    layers = [(int(c), int(k), int(s)) for c, k, s in zip(hf_config.conv_dim, hf_config.conv_kernel,
                                                            hf_config.conv_stride)]
    return {
        "extractor_mode": "layer_norm" if hf_config.feat_extract_norm == "layer" else "default",
        "encoder_layers": hf_config.num_hidden_layers,
        "encoder_embed_dim": hf_config.hidden_size,
        "encoder_ffn_embed_dim": hf_config.intermediate_size,
        "encoder_attention_heads": hf_config.num_attention_heads,
        "activation_fn": hf_config.hidden_act,
        "dropout": hf_config.hidden_dropout,
        "attention_dropout": hf_config.attention_dropout,
        "activation_dropout": hf_config.activation_dropout,
        "encoder_layerdrop": hf_config.layerdrop,
        "dropout_input": hf_config.feat_proj_dropout,
        "layer_norm_first": hf_config.do_stable_layer_norm,
        "conv_feature_layers": repr(layers),
        "conv_bias": hf_config.conv_bias,
        "mask_prob": hf_config.mask_time_prob,
        "mask_length": hf_config.mask_time_length,
        "mask_channel_prob": hf_config.mask_feature_prob,
        "mask_channel_length": hf_config.mask_feature_length,
        "conv_pos": hf_config.num_conv_pos_embeddings,
        "conv_pos_groups": hf_config.num_conv_pos_embedding_groups,
    }


# ---------------------------------------------------------------------------------------------------
# HuBERT <-> HF HubertModel / HubertForCTC: the wav2vec 2.0 backbone map under HF's ``hubert.`` prefix (none in
# the bare HubertModel). HF has no quantizer and no pretraining head (final_proj, label_embs_concat).

HF_HUBERT_PREFIX = "hubert."
#: HF's config has no label rate; HuBERT Base/Large were pretrained on 50 Hz labels.
HUBERT_DEFAULT_LABEL_RATE = 50.0


def hf_hubert_config_kwargs(cfg: Any) -> Dict[str, Any]:
    """Keyword arguments for ``transformers.HubertConfig`` describing our ``HubertConfig`` ``cfg`` (fairseq's
    HuBERT always layer-norms the CNN features: ``feat_proj_layer_norm=True``). HF's HuBERT has no conformer."""
    if str(getattr(cfg, "layer_type", "transformer")) != "transformer":
        raise ConfigError(f"Hugging Face's HubertModel has transformer layers only (model.layer_type={cfg.layer_type})")
    return dict(_backbone_config_kwargs(cfg), feat_proj_layer_norm=True)


def hubert_config_from_hf(hf_config: Any) -> Dict[str, Any]:
    """Our ``hubert`` model config (a dict with ``_name``) for a ``transformers.HubertConfig``."""
    if not getattr(hf_config, "feat_proj_layer_norm", True):
        raise ConfigError("the Hugging Face config has feat_proj_layer_norm=false: fairseq's HuBERT always applies "
                          "its layer_norm to the CNN features, so this model cannot be represented")
    return {"_name": "hubert", **_backbone_config_from_hf(hf_config), "label_rate": HUBERT_DEFAULT_LABEL_RATE}


# ---------------------------------------------------------------------------------------------------
# wav2vec 2.0 conformer (layer_type=conformer) <-> HF Wav2Vec2Conformer*: per-layer renames plugged into
# the maps above (feature extractor, pos_conv, layer norms, quantizer and heads are named the same), the
# rotary inv_freq (one per layer here, one per model in HF) and the config maps.

#: fairseq -> HF renames inside one conformer layer (names relative to ``encoder.layers.{n}.``).
_CONFORMER_LAYER_RENAMES = (
    ("ffn1.layer_norm.", "ffn1_layer_norm."),
    ("ffn2.layer_norm.", "ffn2_layer_norm."),
    ("ffn1.w_1.", "ffn1.intermediate_dense."),
    ("ffn1.w_2.", "ffn1.output_dense."),
    ("ffn2.w_1.", "ffn2.intermediate_dense."),
    ("ffn2.w_2.", "ffn2.output_dense."),
)
#: fairseq keeps a rotary ``inv_freq`` in every layer; HF keeps one, as ``encoder.embed_positions.inv_freq``.
CONFORMER_ROTARY_KEY = "self_attn.rotary_emb.inv_freq"


def conformer_layer_key_to_hf(key: str) -> str:
    """fairseq name of a conformer-layer tensor (relative to the layer) -> HF ``Wav2Vec2ConformerEncoderLayer``
    name (``conv_module.*``, ``self_attn.linear_*``/``pos_bias_*`` and the layer norms keep their names)."""
    for ours, theirs in _CONFORMER_LAYER_RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def conformer_layer_key_from_hf(key: str) -> str:
    """HF conformer-layer name -> fairseq name (the inverse of ``conformer_layer_key_to_hf``)."""
    for ours, theirs in _CONFORMER_LAYER_RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def conformer_layer_to_hf(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One conformer layer's state dict with HF names; the per-layer rotary table is left out."""
    return {conformer_layer_key_to_hf(k): v for k, v in state.items() if k != CONFORMER_ROTARY_KEY}


#: HF's backbone prefix in ``Wav2Vec2ConformerForPreTraining`` / ``ForCTC`` (none in ``Wav2Vec2ConformerModel``).
HF_CONFORMER_PREFIX = "wav2vec2_conformer."
_HF_ROTARY_KEY = "encoder.embed_positions.inv_freq"
_OUR_ROTARY = re.compile(r"^encoder\.layers\.\d+\." + re.escape(CONFORMER_ROTARY_KEY) + "$")


def wav2vec2_conformer_to_hf_state_dict(state_dict: StateDict, hf_prefix: str = HF_CONFORMER_PREFIX) -> StateDict:
    """Our conformer ``Wav2Vec2Model`` state dict -> HF ``Wav2Vec2ConformerForPreTraining`` names
    (``Wav2Vec2ConformerModel`` with ``hf_prefix=""``). The rope models' per-layer ``inv_freq`` (identical
    in every layer) becomes HF's single ``encoder.embed_positions.inv_freq``."""
    rotary = {k: v for k, v in state_dict.items() if _OUR_ROTARY.match(k)}
    rest = {k: v for k, v in state_dict.items() if k not in rotary}
    out = wav2vec2_to_hf_state_dict(rest, hf_prefix, layer_key_to_hf=conformer_layer_key_to_hf)
    if rotary:
        out[hf_prefix + _HF_ROTARY_KEY] = next(iter(rotary.values()))
    return out


def wav2vec2_conformer_from_hf_state_dict(hf_state_dict: StateDict) -> StateDict:
    """HF ``Wav2Vec2Conformer*`` state dict -> our names (prefix ``wav2vec2_conformer.`` or none).
    HF's ``encoder.embed_positions.inv_freq`` is copied into every layer's ``self_attn.rotary_emb``."""
    stripped = {(k[len(HF_CONFORMER_PREFIX):] if k.startswith(HF_CONFORMER_PREFIX) else k): v
                for k, v in hf_state_dict.items()}
    inv_freq = stripped.pop(_HF_ROTARY_KEY, None)
    out = wav2vec2_from_hf_state_dict(stripped, hf_prefix="", layer_key_from_hf=conformer_layer_key_from_hf)
    if inv_freq is not None:
        layers = sorted({int(m.group(1)) for m in map(_LAYER.match, out) if m})
        for n in layers:
            out[f"encoder.layers.{n}.{CONFORMER_ROTARY_KEY}"] = inv_freq.clone()
    return out


_HF_POSITIONS = {"rel_pos": "relative", "rope": "rotary"}


def hf_conformer_config_kwargs(cfg: Any) -> Dict[str, Any]:
    """Keyword arguments for ``transformers.Wav2Vec2ConformerConfig`` describing our conformer ``cfg``.

    HF's conformer encoder exists in one layout only (final LayerNorm after the layers, none before, no
    positional convolution): it matches fairseq's ``layer_norm_first=True`` with ``rel_pos``/``rope`` and
    ESPnet attention (the released conformer checkpoints); other settings raise a ConfigError.
    """
    if str(cfg.layer_type) != "conformer" or str(cfg.attn_type) != "espnet" or str(cfg.pos_enc_type) not in _HF_POSITIONS:
        raise ConfigError(
            "Hugging Face's Wav2Vec2Conformer needs model.layer_type=conformer, model.attn_type=espnet and "
            f"model.pos_enc_type rel_pos or rope (got {cfg.layer_type}, '{cfg.attn_type}', {cfg.pos_enc_type})"
        )
    if not cfg.layer_norm_first:
        raise ConfigError(
            "Hugging Face's Wav2Vec2Conformer implements only model.layer_norm_first=true (the Large layout); "
            "a post-LN conformer would give different outputs there"
        )
    kwargs = hf_config_kwargs(cfg)
    del kwargs["do_stable_layer_norm"]
    kwargs.update(
        hidden_act="swish",  # fairseq's conformer layers always use swish, whatever activation_fn says
        position_embeddings_type=_HF_POSITIONS[str(cfg.pos_enc_type)],
        conv_depthwise_kernel_size=cfg.depthwise_conv_kernel_size,
        conformer_conv_dropout=cfg.dropout,
    )
    return kwargs


def wav2vec2_conformer_config_from_hf(hf_config: Any) -> Dict[str, Any]:
    """Our ``wav2vec2`` conformer model config (a dict with ``_name``) for a ``transformers.Wav2Vec2ConformerConfig``."""
    positions = {theirs: ours for ours, theirs in _HF_POSITIONS.items()}
    if hf_config.position_embeddings_type not in positions:
        raise ConfigError(
            f"Hugging Face position_embeddings_type={hf_config.position_embeddings_type!r} has no fairseq "
            "equivalent (HF's conformer never applies its positional convolution); use relative or rotary"
        )
    stable = copy.copy(hf_config)
    stable.do_stable_layer_norm = True  # HF's conformer layout is fairseq's layer_norm_first
    cfg = wav2vec2_config_from_hf(stable)
    cfg.update(
        activation_fn="swish",
        layer_type="conformer",
        attn_type="espnet",
        pos_enc_type=positions[hf_config.position_embeddings_type],
        depthwise_conv_kernel_size=hf_config.conv_depthwise_kernel_size,
    )
    return cfg


# ---------------------------------------------------------------------------------------------------
# CTC models (wav2vec_ctc <-> Wav2Vec2ForCTC / Wav2Vec2ConformerForCTC) and whole checkpoints <-> HF folders.
# Our CTC keys are the backbone's under ``w2v_encoder.w2v_model.`` plus ``w2v_encoder.proj``; HF's are the
# backbone's under its model prefix plus ``lm_head``. HF's vocab.json names fairseq's index 0 (``<s>``, the
# CTC blank) ``<pad>`` and index 1 ``<s>``: the rows stay where they are, only the names of 0 and 1 swap.

CTC_BACKBONE_PREFIX = "w2v_encoder.w2v_model."
CTC_PROJ_PREFIX = "w2v_encoder.proj."
HF_LM_HEAD_PREFIX = "lm_head."
#: fairseq's four specials by index, and the names HF gives the same indices.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def is_conformer_config(cfg: Any) -> bool:
    return str(getattr(cfg, "layer_type", "transformer")) == "conformer"


def ctc_to_hf_state_dict(state_dict: StateDict, conformer: bool = False, hf_prefix: str = "wav2vec2.") -> StateDict:
    """Our ``wav2vec_ctc`` state dict -> HF ``Wav2Vec2ForCTC`` (or ``Wav2Vec2ConformerForCTC``) names;
    ``hubert_ctc`` -> ``HubertForCTC`` with ``hf_prefix="hubert."``."""
    backbone = {k[len(CTC_BACKBONE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(CTC_BACKBONE_PREFIX)}
    if conformer:
        out = wav2vec2_conformer_to_hf_state_dict(backbone)
    else:
        out = wav2vec2_to_hf_state_dict(backbone, hf_prefix)
    for key, value in state_dict.items():
        if key.startswith(CTC_PROJ_PREFIX):
            out[HF_LM_HEAD_PREFIX + key[len(CTC_PROJ_PREFIX):]] = value
        elif not key.startswith(CTC_BACKBONE_PREFIX):
            raise KeyError(f"unexpected wav2vec_ctc key '{key}'")
    return out


def ctc_from_hf_state_dict(hf_state_dict: StateDict, conformer: bool = False,
                           hf_prefix: str = "wav2vec2.") -> StateDict:
    """HF ``Wav2Vec2ForCTC`` / ``Wav2Vec2ConformerForCTC`` (``HubertForCTC`` with ``hf_prefix="hubert."``) state
    dict -> our ``wav2vec_ctc`` / ``hubert_ctc`` names."""
    heads = {k: v for k, v in hf_state_dict.items() if k.startswith(HF_LM_HEAD_PREFIX)}
    backbone = {k: v for k, v in hf_state_dict.items() if k not in heads}
    if conformer:
        mapped = wav2vec2_conformer_from_hf_state_dict(backbone)
    else:
        mapped = wav2vec2_from_hf_state_dict(backbone, hf_prefix=hf_prefix)
    out = {CTC_BACKBONE_PREFIX + k: v for k, v in mapped.items()}
    out.update({CTC_PROJ_PREFIX + k[len(HF_LM_HEAD_PREFIX):]: v for k, v in heads.items()})
    return out


def hf_vocab(dictionary: Any) -> Dict[str, int]:
    """vocab.json for a fairseq dictionary, in HF's naming of the specials (blank = ``<pad>`` = 0)."""
    if tuple(dictionary.symbols[:4]) != FAIRSEQ_SPECIALS:
        raise ConfigError(f"the target dictionary starts with {dictionary.symbols[:4]}, not fairseq's {FAIRSEQ_SPECIALS}")
    return {symbol: i for i, symbol in enumerate(HF_SPECIALS + tuple(dictionary.symbols[4:]))}


def dictionary_from_hf_vocab(vocab: Dict[str, int]) -> Any:
    """Our Dictionary for an HF CTC vocab.json written the way HF's fairseq converter writes it."""
    from fairseq_lite.data.dictionary import Dictionary

    symbols = [s for s, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if [vocab[s] for s in symbols] != list(range(len(symbols))) or tuple(symbols[:4]) != HF_SPECIALS:
        raise ConfigError(
            f"vocab.json must number its tokens 0..N-1 starting with {', '.join(HF_SPECIALS)} (the layout of "
            "converted fairseq models); this one starts with " + ", ".join(symbols[:4])
        )
    dictionary = Dictionary()
    for symbol in symbols[4:]:
        dictionary.add_symbol(symbol)
    return dictionary


# ---------------------------------------------------------------------------------------------------
# MMS language adapters (layer_type=trf_adp) <-> HF ``adapter_attn_dim``. Our ``AdapterFast`` stacks every
# language's adapter in one tensor per layer (``encoder.layers.{n}.adapter_layer.W_a`` N×D×E ...); HF's
# ``Wav2Vec2AttnAdapterLayer`` holds one language (``adapter_layer.linear_1.weight`` D×E ...) and keeps the others
# in per-language ``adapter.<lang>.safetensors`` files (adapters + ``lm_head``) that ``load_adapter(lang)`` reads.
# HF's own converter keeps row 0; ours writes row k for the k-th language.

#: Our ``AdapterFast`` tensor -> HF ``Wav2Vec2AttnAdapterLayer`` name.
_ADAPTER_RENAMES = (("ln_W", "norm.weight"), ("ln_b", "norm.bias"), ("W_a", "linear_1.weight"),
                    ("b_a", "linear_1.bias"), ("W_b", "linear_2.weight"), ("b_b", "linear_2.bias"))
_OUR_ADAPTER = re.compile(r"^encoder\.layers\.(\d+)\.adapter_layer\.(\w+)$")
_HF_ADAPTER = re.compile(r"^encoder\.layers\.(\d+)\.adapter_layer\.(\w+\.\w+)$")
#: HF's name of a language's adapter file in a model folder.
HF_ADAPTER_FILE = "adapter.{}.safetensors"


def hf_adapter_kwargs(cfg: Any) -> Dict[str, Any]:
    """``adapter_attn_dim`` for a ``trf_adp`` backbone config (nothing for others). HF's adapters exist in the
    pre-LN layer only, on every layer, with ReLU: other adapter layouts are a ConfigError."""
    if str(getattr(cfg, "layer_type", "transformer")) != "trf_adp":
        return {}
    from fairseq_lite.modules.adapter import parse_adapter_layers

    if not cfg.layer_norm_first:
        raise ConfigError("Hugging Face has adapters only in its pre-LN layer (do_stable_layer_norm): this post-LN "
                          "model (layer_norm_first=false) with adapters cannot be converted")
    if len(parse_adapter_layers(cfg.adp_trf_idx, cfg.encoder_layers)) != cfg.encoder_layers:
        raise ConfigError(f"Hugging Face puts an adapter on every layer: model.adp_trf_idx={cfg.adp_trf_idx!r} (some "
                          "layers only) cannot be converted")
    if str(cfg.adp_act_fn) != "relu":
        raise ConfigError(f"Hugging Face's adapters use relu: model.adp_act_fn={cfg.adp_act_fn} cannot be converted")
    return {"adapter_attn_dim": cfg.adp_dim}


def split_adapters(state_dict: StateDict) -> Tuple[StateDict, StateDict]:
    """(everything else, the ``adapter_layer`` tensors) of a backbone or HF state dict."""
    adapters = {k: v for k, v in state_dict.items() if ".adapter_layer." in k}
    return {k: v for k, v in state_dict.items() if k not in adapters}, adapters


def adapter_row_to_hf(adapters: StateDict, row: int, hf_prefix: str = "wav2vec2.") -> StateDict:
    """Language ``row`` of our stacked backbone adapter tensors, with HF names under ``hf_prefix``."""
    renames = dict(_ADAPTER_RENAMES)
    out: StateDict = {}
    for key, value in adapters.items():
        layer, name = _OUR_ADAPTER.match(key).groups()
        out[f"{hf_prefix}encoder.layers.{layer}.adapter_layer.{renames[name]}"] = value[row].clone()
    return out


def adapters_from_hf(rows: List[StateDict], hf_prefix: str = "wav2vec2.") -> StateDict:
    """Our stacked backbone adapter tensors from one HF adapter state dict per language (row k = ``rows[k]``)."""
    renames = {theirs: ours for ours, theirs in _ADAPTER_RENAMES}
    out: StateDict = {}
    for key in rows[0]:
        match = _HF_ADAPTER.match(key[len(hf_prefix):]) if key.startswith(hf_prefix) else None
        if match is None:
            continue  # lm_head: the caller's
        layer, name = match.groups()
        out[f"encoder.layers.{layer}.adapter_layer.{renames[name]}"] = torch.stack([row[key] for row in rows])
    return out
