"""w2v-BERT 2.0 (HF ``Wav2Vec2BertModel``, Seamless's ``conformer_shaw``): ``W2vBertConfig`` and the ``w2v_bert``
model.

Waveform → ``frontend`` (80-bin Kaldi fbank, two frames stacked: 160-d at 50 Hz, ``W2vBertFbankFrontend``) →
``layer_norm`` + ``post_extract_proj`` (HF ``feature_projection``) → ``dropout_input`` → masking (``mask_emb``, HF
``masked_spec_embed``) → ``encoder`` (``W2vBertEncoder``: Shaw relative-key conformer layers, no final norm).
Field names are fairseq's wav2vec 2.0 ones where the meaning is the same; HF's names for what fairseq lacks
(``left_max_position_embeddings``, ``right_max_position_embeddings``, ``conformer_conv_dropout``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from fairseq_lite.dataclass import FairseqDataclass, field_like, help_text
from fairseq_lite.errors import ConfigError
from fairseq_lite.models import BaseFairseqModel, register_model
from fairseq_lite.models.wav2vec.wav2vec2 import MASKING_DISTRIBUTION_CHOICES, Wav2Vec2Config
from fairseq_lite.modules.masking import masker_from_config
from fairseq_lite.modules.w2v_bert_encoder import W2vBertEncoder
from fairseq_lite.modules.w2v_bert_frontend import W2vBertFbankFrontend

#: The field of ``Wav2Vec2Config`` named ``name`` (w2v-BERT repeats wav2vec 2.0's masking options).
_w2v = functools.partial(field_like, Wav2Vec2Config)


@dataclass
class W2vBertConfig(FairseqDataclass):
    """The w2v-BERT 2.0 encoder (defaults: ``facebook/w2v-bert-2.0``'s sizes and HF's dropouts) and wav2vec 2.0's
    masking options (mask 0.65 × 10, as fairseq2's w2vbert pretraining)."""

    encoder_layers: int = field(default=24, metadata=help_text("number of conformer layers"))
    encoder_embed_dim: int = field(default=1024, metadata=help_text("encoder embedding dimension"))
    encoder_ffn_embed_dim: int = field(default=4096, metadata=help_text("encoder embedding dimension for FFN"))
    encoder_attention_heads: int = field(default=16, metadata=help_text("num encoder attention heads"))
    dropout: float = field(default=0.0, metadata=help_text("dropout after each FFN and on the encoder input "
                                                           "(HF hidden_dropout)"))
    attention_dropout: float = field(default=0.0, metadata=help_text(
        "dropout on the attention weights and the attention output (HF attention_dropout)"))
    activation_dropout: float = field(default=0.0, metadata=help_text("dropout after the FFN activation"))
    conformer_conv_dropout: float = field(default=0.1, metadata=help_text(
        "dropout after each convolution module (HF conformer_conv_dropout)"))
    dropout_input: float = field(default=0.0, metadata=help_text(
        "dropout on the projected features (HF feat_proj_dropout)"))
    encoder_layerdrop: float = field(default=0.0, metadata=help_text("probability of dropping a conformer layer"))
    depthwise_conv_kernel_size: int = field(default=31, metadata=help_text("kernel of the causal depthwise conv"))
    left_max_position_embeddings: int = field(default=64, metadata=help_text(
        "relative positions are clipped to this many frames to the left"))
    right_max_position_embeddings: int = field(default=8, metadata=help_text(
        "relative positions are clipped to this many frames to the right"))
    num_mel_bins: int = field(default=80, metadata=help_text("mel bins of the fbank front end"))
    feature_stride: int = field(default=2, metadata=help_text(
        "fbank frames stacked per encoder frame (input dim = num_mel_bins * feature_stride)"))
    mask_length: int = _w2v("mask_length")
    mask_prob: float = _w2v("mask_prob")
    mask_selection: MASKING_DISTRIBUTION_CHOICES = _w2v("mask_selection")
    mask_other: float = _w2v("mask_other")
    no_mask_overlap: bool = _w2v("no_mask_overlap")
    mask_min_space: int = _w2v("mask_min_space")
    require_same_masks: bool = _w2v("require_same_masks")
    mask_dropout: float = _w2v("mask_dropout")
    mask_channel_length: int = _w2v("mask_channel_length")
    mask_channel_prob: float = _w2v("mask_channel_prob")
    mask_channel_before: bool = _w2v("mask_channel_before")
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = _w2v("mask_channel_selection")
    mask_channel_other: float = _w2v("mask_channel_other")
    no_mask_channel_overlap: bool = _w2v("no_mask_channel_overlap")
    mask_channel_min_space: int = _w2v("mask_channel_min_space")
    checkpoint_activations: bool = _w2v("checkpoint_activations")

    @property
    def feature_dim(self) -> int:
        """The width of the stacked fbank features (HF ``feature_projection_input_dim``)."""
        return self.num_mel_bins * self.feature_stride

    def check_values(self, cfg: Any) -> None:
        """The heads divide the width; the conv kernel is odd."""
        heads, dim = self.encoder_attention_heads, self.encoder_embed_dim
        if heads <= 0 or dim % heads:
            raise ConfigError(f"model.encoder_attention_heads={heads} does not divide model.encoder_embed_dim={dim}")
        if self.depthwise_conv_kernel_size % 2 == 0:
            raise ConfigError(f"model.depthwise_conv_kernel_size={self.depthwise_conv_kernel_size} must be odd")


def encoder_from_config(cfg: W2vBertConfig) -> W2vBertEncoder:
    """The ``W2vBertEncoder`` a ``W2vBertConfig`` describes."""
    return W2vBertEncoder(
        cfg.encoder_embed_dim, cfg.encoder_layers, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        layerdrop=cfg.encoder_layerdrop, checkpoint_activations=cfg.checkpoint_activations,
        depthwise_conv_kernel_size=cfg.depthwise_conv_kernel_size, conv_dropout=cfg.conformer_conv_dropout,
        left_max_position_embeddings=cfg.left_max_position_embeddings,
        right_max_position_embeddings=cfg.right_max_position_embeddings,
    )


@register_model("w2v_bert", dataclass=W2vBertConfig)
class W2vBertModel(BaseFairseqModel):
    """The w2v-BERT 2.0 encoder over waveforms (``forward``) or over precomputed features (``encode``)."""

    def __init__(self, cfg: W2vBertConfig, sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg
        self.frontend = W2vBertFbankFrontend(sample_rate=sample_rate, num_mel_bins=cfg.num_mel_bins,
                                             stride=cfg.feature_stride)
        self.layer_norm = nn.LayerNorm(cfg.feature_dim)
        self.post_extract_proj = nn.Linear(cfg.feature_dim, cfg.encoder_embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.masker = masker_from_config(cfg)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = encoder_from_config(cfg)

    @classmethod
    def build_model(cls, cfg: W2vBertConfig, task: Any = None) -> "W2vBertModel":
        return cls(cfg, getattr(getattr(task, "cfg", None), "sample_rate", 16000))

    def forward_frontend(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Waveforms B×T (and their padding mask) → fbank features B×T'×160 and the frame padding mask."""
        return self.frontend(source, padding_mask)

    def encode(self, features: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = False,
               layer: Optional[int] = None, mask_indices: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Features B×T×160 → ``x`` B×T×D (after 0-based ``layer``, or the last), ``padding_mask``,
        ``layer_results`` ([(x, None, ffn_out)] per layer run, as wav2vec 2.0's), ``mask_indices`` (B×T time mask
        or None; a given one is used instead of drawing), ``features`` (projected, before masking) and
        ``features_unprojected`` (the layer-normed 160-d input)."""
        normed = self.layer_norm(features)
        projected = self.dropout_input(self.post_extract_proj(normed))
        x, mask_indices = (self.masker(projected, padding_mask, self.mask_emb, mask_indices) if mask
                           else (projected, None))
        x, layer_results = self.encoder(x, padding_mask=padding_mask, layer=layer)
        return {"x": x, "padding_mask": padding_mask, "layer_results": layer_results, "mask_indices": mask_indices,
                "features": projected, "features_unprojected": normed}

    def extract_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         mask: bool = False, layer: Optional[int] = None, corpus_key: Any = None) -> Dict[str, Any]:
        """``encode`` of the waveforms' features: ``x``, ``padding_mask``, ``layer_results`` (and the rest)."""
        features, padding_mask = self.forward_frontend(source, padding_mask)
        return self.encode(features, padding_mask, mask=mask, layer=layer)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = True,
                features_only: bool = False, layer: Optional[int] = None, corpus_key: Any = None) -> Dict[str, Any]:
        """With ``features_only``: ``extract_features``' dict (what ``Wav2VecEncoder`` and infer.py use)."""
        if not features_only:
            raise ValueError("this w2v_bert model has no pretraining heads: call it with features_only=True")
        return self.extract_features(source, padding_mask, mask=mask, layer=layer)

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """For fine-tuning: keep the layers up to ``last_layer`` (0-based; all by default)."""
        if last_layer is not None:
            self.encoder.layers = nn.ModuleList(l for i, l in enumerate(self.encoder.layers) if i <= last_layer)
