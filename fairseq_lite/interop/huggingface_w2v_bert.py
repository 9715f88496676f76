"""Hugging Face Transformers ↔ fairseq_lite for w2v-BERT 2.0: state-dict key maps and config maps.

HF ``Wav2Vec2BertModel`` keys ↔ our ``w2v_bert`` keys: ``feature_projection.layer_norm`` ↔ ``layer_norm``,
``feature_projection.projection`` ↔ ``post_extract_proj``, ``masked_spec_embed`` ↔ ``mask_emb``, and inside the
layers the wav2vec 2.0 conformer renames (``ffn{1,2}_layer_norm`` ↔ ``ffn{1,2}.layer_norm``,
``ffn{1,2}.{intermediate,output}_dense`` ↔ ``ffn{1,2}.w_{1,2}``; ``self_attn.*``, ``conv_module.*`` and the layer
norms keep their names). ``Wav2Vec2BertForCTC`` adds the prefix ``wav2vec2_bert.`` and ``lm_head``, which are
``w2v_encoder.w2v_model.*`` and ``w2v_encoder.proj`` in ``w2v_bert_ctc``; its adapter (``add_adapter``)
``wav2vec2_bert.adapter.*`` is ``w2v_encoder.adapter.*``. HF keeps no ``masked_spec_embed``
when its config never masks; the import then keeps the model's freshly drawn ``mask_emb``.
"""

from __future__ import annotations

import re
from typing import Any, Dict

import torch

from fairseq_lite.errors import ConfigError
from fairseq_lite.interop.huggingface import (
    CTC_BACKBONE_PREFIX, CTC_PROJ_PREFIX, HF_LM_HEAD_PREFIX, StateDict, conformer_layer_key_from_hf,
    conformer_layer_key_to_hf,
)

#: HF's backbone prefix in ``Wav2Vec2BertForCTC`` (none in ``Wav2Vec2BertModel``).
HF_W2V_BERT_PREFIX = "wav2vec2_bert."

#: ours → HF outside the layers.
_TOP_LEVEL_RENAMES = (
    ("mask_emb", "masked_spec_embed"),
    ("layer_norm.", "feature_projection.layer_norm."),
    ("post_extract_proj.", "feature_projection.projection."),
)
#: The prefixes of the ``w2v_bert`` keys HF's ``Wav2Vec2BertModel`` has (the rest are pretraining heads).
W2V_BERT_BACKBONE_PREFIXES = ("mask_emb", "layer_norm.", "post_extract_proj.", "encoder.")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def _rename(key: str, pairs, layer_map) -> str:
    layer = _LAYER.match(key)
    if layer:
        return f"encoder.layers.{layer.group(1)}.{layer_map(layer.group(2))}"
    for source, target in pairs:
        if key == source or (source.endswith(".") and key.startswith(source)):
            return target + key[len(source):]
    raise KeyError(f"unexpected w2v-BERT key '{key}'")


def w2v_bert_to_hf_state_dict(state_dict: StateDict, hf_prefix: str = "") -> StateDict:
    """Our ``w2v_bert`` state dict (the backbone) → HF ``Wav2Vec2BertModel`` names (``ForCTC``'s with
    ``hf_prefix="wav2vec2_bert."``)."""
    return {hf_prefix + _rename(k, _TOP_LEVEL_RENAMES, conformer_layer_key_to_hf): v for k, v in state_dict.items()}


def w2v_bert_from_hf_state_dict(hf_state_dict: StateDict) -> StateDict:
    """HF ``Wav2Vec2BertModel`` state dict (prefix ``wav2vec2_bert.`` or none) → our ``w2v_bert`` names; keys of
    anything else (``adapter``, ``intermediate_ffn``, heads) raise a KeyError naming them."""
    inverse = [(theirs, ours) for ours, theirs in _TOP_LEVEL_RENAMES]
    out: StateDict = {}
    for key, value in hf_state_dict.items():
        body = key[len(HF_W2V_BERT_PREFIX):] if key.startswith(HF_W2V_BERT_PREFIX) else key
        out[_rename(body, inverse, conformer_layer_key_from_hf)] = value
    return out


#: ``w2v_bert_ctc``'s adapter (HF ``add_adapter``) and HF's name for it; inside, only the FFN is renamed.
CTC_ADAPTER_PREFIX = "w2v_encoder.adapter."
HF_ADAPTER_PREFIX = HF_W2V_BERT_PREFIX + "adapter."
_ADAPTER_FFN_RENAMES = (("ffn.layer_norm.", "ffn_layer_norm."), ("ffn.w_1.", "ffn.intermediate_dense."),
                        ("ffn.w_2.", "ffn.output_dense."))
_ADAPTER_LAYER = re.compile(r"^(layers\.\d+\.)(.+)$")


def _adapter_key(key: str, renames) -> str:
    layer = _ADAPTER_LAYER.match(key)
    if layer:
        for source, target in renames:
            if layer.group(2).startswith(source):
                return layer.group(1) + target + layer.group(2)[len(source):]
    return key


def w2v_bert_ctc_to_hf_state_dict(state_dict: StateDict) -> StateDict:
    """Our ``w2v_bert_ctc`` state dict → HF ``Wav2Vec2BertForCTC`` names."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(CTC_PROJ_PREFIX):
            out[HF_LM_HEAD_PREFIX + key[len(CTC_PROJ_PREFIX):]] = value
        elif key.startswith(CTC_ADAPTER_PREFIX):
            out[HF_ADAPTER_PREFIX + _adapter_key(key[len(CTC_ADAPTER_PREFIX):], _ADAPTER_FFN_RENAMES)] = value
        elif key.startswith(CTC_BACKBONE_PREFIX):
            out.update(w2v_bert_to_hf_state_dict({key[len(CTC_BACKBONE_PREFIX):]: value}, HF_W2V_BERT_PREFIX))
        else:
            raise KeyError(f"unexpected w2v_bert_ctc key '{key}'")
    return out


def w2v_bert_ctc_from_hf_state_dict(hf_state_dict: StateDict) -> StateDict:
    """HF ``Wav2Vec2BertForCTC`` state dict → our ``w2v_bert_ctc`` names."""
    heads = {k: v for k, v in hf_state_dict.items() if k.startswith((HF_LM_HEAD_PREFIX, HF_ADAPTER_PREFIX))}
    backbone = w2v_bert_from_hf_state_dict({k: v for k, v in hf_state_dict.items() if k not in heads})
    out = {CTC_BACKBONE_PREFIX + k: v for k, v in backbone.items()}
    inverse = [(theirs, ours) for ours, theirs in _ADAPTER_FFN_RENAMES]
    for key, value in heads.items():
        if key.startswith(HF_LM_HEAD_PREFIX):
            out[CTC_PROJ_PREFIX + key[len(HF_LM_HEAD_PREFIX):]] = value
        else:
            out[CTC_ADAPTER_PREFIX + _adapter_key(key[len(HF_ADAPTER_PREFIX):], inverse)] = value
    return out


# ---------------------------------------------------------------------------------------------------
# Configs: our field ↔ HF ``Wav2Vec2BertConfig`` field, for the fields whose meaning is the same.

_CONFIG_FIELDS = (
    ("encoder_layers", "num_hidden_layers"),
    ("encoder_embed_dim", "hidden_size"),
    ("encoder_ffn_embed_dim", "intermediate_size"),
    ("encoder_attention_heads", "num_attention_heads"),
    ("dropout", "hidden_dropout"),
    ("attention_dropout", "attention_dropout"),
    ("activation_dropout", "activation_dropout"),
    ("conformer_conv_dropout", "conformer_conv_dropout"),
    ("dropout_input", "feat_proj_dropout"),
    ("encoder_layerdrop", "layerdrop"),
    ("depthwise_conv_kernel_size", "conv_depthwise_kernel_size"),
    ("left_max_position_embeddings", "left_max_position_embeddings"),
    ("right_max_position_embeddings", "right_max_position_embeddings"),
    ("mask_prob", "mask_time_prob"),
    ("mask_length", "mask_time_length"),
    ("mask_channel_prob", "mask_feature_prob"),
    ("mask_channel_length", "mask_feature_length"),
)
#: HF settings our model implements one way only: field → the value it must have.
_HF_FIXED = {"position_embeddings_type": "relative_key", "hidden_act": "swish", "layer_norm_eps": 1e-5,
             "use_intermediate_ffn_before_adapter": False, "apply_spec_augment": True, "adapter_act": "relu"}
#: ``w2v_bert_ctc``'s adapter fields ↔ HF's (``output_hidden_size`` apart: 0 here = HF's ``hidden_size``).
_ADAPTER_FIELDS = (("add_adapter", "add_adapter"), ("adapter_kernel_size", "adapter_kernel_size"),
                   ("adapter_stride", "adapter_stride"), ("num_adapter_layers", "num_adapter_layers"))
#: The fbank frames HF's feature extractor stacks (``stride``): our ``feature_stride``.
_HF_FEATURE_STRIDE = 2


def hf_w2v_bert_config_kwargs(cfg: Any) -> Dict[str, Any]:
    """Keyword arguments for ``transformers.Wav2Vec2BertConfig`` describing our ``W2vBertConfig`` ``cfg`` (a
    dataclass or a dict)."""
    get = cfg.get if isinstance(cfg, dict) else lambda name: getattr(cfg, name)
    kwargs = {theirs: get(ours) for ours, theirs in _CONFIG_FIELDS}
    kwargs["feature_projection_input_dim"] = get("num_mel_bins") * get("feature_stride")
    kwargs.update(_HF_FIXED, add_adapter=False)
    return kwargs


def hf_w2v_bert_adapter_kwargs(ctc_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """HF config keyword arguments of a ``w2v_bert_ctc`` config's (a dict's) adapter."""
    kwargs = {theirs: ctc_cfg[ours] for ours, theirs in _ADAPTER_FIELDS if ours in ctc_cfg}
    return {**kwargs, "output_hidden_size": ctc_cfg.get("output_hidden_size") or None}


def w2v_bert_adapter_config_from_hf(hf_config: Any) -> Dict[str, Any]:
    """The ``w2v_bert_ctc`` adapter fields for an HF ``Wav2Vec2BertConfig``."""
    width = hf_config.output_hidden_size
    return {**{ours: getattr(hf_config, theirs) for ours, theirs in _ADAPTER_FIELDS},
            "output_hidden_size": 0 if width in (None, hf_config.hidden_size) else width}


def w2v_bert_config_from_hf(hf_config: Any) -> Dict[str, Any]:
    """Our ``w2v_bert`` model config (a dict with ``_name``) for a ``transformers.Wav2Vec2BertConfig``; settings
    we do not implement (another position type or activation, the adapter) raise a ConfigError naming them."""
    for name, value in _HF_FIXED.items():
        if getattr(hf_config, name, value) != value:
            raise ConfigError(f"Hugging Face config {name}={getattr(hf_config, name)!r} is not supported by w2v_bert "
                              f"(it implements {name}={value!r} only)")
    dim = hf_config.feature_projection_input_dim
    if dim % _HF_FEATURE_STRIDE:
        raise ConfigError(f"feature_projection_input_dim={dim} is not {_HF_FEATURE_STRIDE} stacked fbank frames")
    cfg = {ours: getattr(hf_config, theirs) for ours, theirs in _CONFIG_FIELDS}
    return {"_name": "w2v_bert", **cfg, "num_mel_bins": dim // _HF_FEATURE_STRIDE,
            "feature_stride": _HF_FEATURE_STRIDE}


def with_mask_emb(weights: StateDict, dim: int, prefix: str = "") -> StateDict:
    """``weights`` with a fresh ``mask_emb`` (uniform in [0, 1), as the model draws it) where HF saved no
    ``masked_spec_embed`` (its config never masks), so the checkpoint loads strictly and can be fine-tuned with
    masking."""
    key = prefix + "mask_emb"
    return weights if key in weights else {key: torch.empty(dim).uniform_(), **weights}

