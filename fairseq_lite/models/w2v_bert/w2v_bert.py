"""w2v-BERT 2.0 (HF ``Wav2Vec2BertModel``, Seamless's ``conformer_shaw``): ``W2vBertConfig`` and the ``w2v_bert``
model.

Waveform → ``frontend`` (80-bin Kaldi fbank, two frames stacked: 160-d at 50 Hz, ``W2vBertFbankFrontend``) →
``layer_norm`` + ``post_extract_proj`` (HF ``feature_projection``) → ``dropout_input`` → masking (``mask_emb``, HF
``masked_spec_embed``) → ``encoder`` (``W2vBertEncoder``: Shaw relative-key conformer layers, no final norm).
Field names are fairseq's wav2vec 2.0 ones where the meaning is the same; HF's names for what fairseq lacks
(``left_max_position_embeddings``, ``right_max_position_embeddings``, ``conformer_conv_dropout``), fairseq2's
w2vbert names for the pretraining objective (``num_bert_encoder_layers``, ``num_target_codebooks``).

Pretraining (fairseq2's ``W2VBertModel``, whose defaults the config keeps): wav2vec 2.0's contrastive task on
the output of layer ``encoder_layers - num_bert_encoder_layers`` (``final_proj`` against ``project_q`` of the
Gumbel ``quantizer``'s codewords of the unmasked layer-normed fbank features, distractors from the other masked
frames) and masked prediction on the top layer: ``mlm_proj`` (fairseq's name; fairseq2's ``final_bert_proj``)
scores the quantizer's code ids of the masked frames. The criterion is ``w2v_bert``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from fairseq_lite.dataclass import FairseqDataclass, field_like, help_text
from fairseq_lite.errors import ConfigError
from fairseq_lite.models import BaseFairseqModel, register_model
from fairseq_lite.models.wav2vec.wav2vec2 import MASKING_DISTRIBUTION_CHOICES, Wav2Vec2Config, Wav2Vec2Model
from fairseq_lite.modules.gumbel_vector_quantizer import GumbelVectorQuantizer
from fairseq_lite.modules.masking import masked_frames, masker_from_config
from fairseq_lite.modules.negatives import contrastive_logits, sample_negatives
from fairseq_lite.modules.w2v_bert_encoder import W2vBertEncoder
from fairseq_lite.modules.w2v_bert_frontend import W2vBertFbankFrontend

#: The field of ``Wav2Vec2Config`` named ``name`` (w2v-BERT repeats wav2vec 2.0's masking options).
_w2v = functools.partial(field_like, Wav2Vec2Config)

#: The pretraining heads: what an HF conversion lacks (HF's converter drops the quantizer and projections).
PRETRAINING_HEADS = ("quantizer", "project_q", "final_proj", "mlm_proj")

logger = logging.getLogger(__name__)


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
    num_bert_encoder_layers: int = field(default=16, metadata=help_text(
        "top layers used for masked prediction only: the contrastive loss reads the output of layer "
        "encoder_layers - num_bert_encoder_layers (fairseq2's w2vbert option)"))
    num_target_codebooks: int = field(default=1, metadata=help_text(
        "codebook groups (the first ones) whose ids the masked prediction targets (fairseq2's w2vbert option)"))
    latent_vars: int = _w2v("latent_vars", default=1024)
    latent_groups: int = _w2v("latent_groups", default=1)
    latent_dim: int = _w2v("latent_dim", default=1024)
    latent_temp: Tuple[float, float, float] = _w2v("latent_temp", default=(2.0, 0.1, 0.999995))
    final_dim: int = _w2v("final_dim", default=768)
    num_negatives: int = _w2v("num_negatives")
    logit_temp: float = _w2v("logit_temp")

    @property
    def feature_dim(self) -> int:
        """The width of the stacked fbank features (HF ``feature_projection_input_dim``)."""
        return self.num_mel_bins * self.feature_stride

    def check_values(self, cfg: Any) -> None:
        """The heads divide the width; the conv kernel is odd; the MLM targets exist; for pretraining (criterion
        ``w2v_bert``) the contrastive layer exists and nothing drops it."""
        heads, dim = self.encoder_attention_heads, self.encoder_embed_dim
        if heads <= 0 or dim % heads:
            raise ConfigError(f"model.encoder_attention_heads={heads} does not divide model.encoder_embed_dim={dim}")
        if self.depthwise_conv_kernel_size % 2 == 0:
            raise ConfigError(f"model.depthwise_conv_kernel_size={self.depthwise_conv_kernel_size} must be odd")
        if not 0 < self.num_target_codebooks <= self.latent_groups:
            raise ConfigError(f"model.num_target_codebooks={self.num_target_codebooks} must be in 1.."
                              f"model.latent_groups={self.latent_groups}")
        if getattr(getattr(cfg, "criterion", None), "_name", None) == "w2v_bert":
            self._check_pretraining()

    def _check_pretraining(self) -> None:
        """What the ``w2v_bert`` criterion needs: a contrastive layer inside the encoder, no layerdrop."""
        if not 0 <= self.num_bert_encoder_layers < self.encoder_layers:
            raise ConfigError(f"model.num_bert_encoder_layers={self.num_bert_encoder_layers} must be below "
                              f"model.encoder_layers={self.encoder_layers} (the contrastive loss reads layer "
                              "encoder_layers - num_bert_encoder_layers)")
        if self.encoder_layerdrop > 0:
            raise ConfigError(f"model.encoder_layerdrop={self.encoder_layerdrop} with criterion w2v_bert: the "
                              "contrastive loss reads a fixed layer, which layerdrop would skip; set it to 0 "
                              "(fairseq2 refuses layerdrop for w2v-BERT too)")


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
        final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
        vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else final_dim
        self.quantizer = GumbelVectorQuantizer(
            dim=cfg.feature_dim, num_vars=cfg.latent_vars, temp=cfg.latent_temp, groups=cfg.latent_groups,
            combine_groups=False, vq_dim=vq_dim, time_first=True)
        self.project_q = nn.Linear(vq_dim, final_dim)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, final_dim)
        self.mlm_proj = nn.Linear(cfg.encoder_embed_dim, cfg.latent_vars * cfg.num_target_codebooks)

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
        """With ``features_only``: ``extract_features``' dict (what ``Wav2VecEncoder`` and infer.py use).

        Otherwise the pretraining output: ``x`` ((1+N)×B×M contrastive logits, the positive first), the quantizer's
        ``num_vars``/``code_perplexity``/``prob_perplexity``/``temp``, ``features_pen`` (mean square of the fbank
        features, as fairseq2's; it has no gradient, the front end having no parameters), ``mlm_logits``
        (B·M × latent_vars × num_target_codebooks, fairseq2's layout), ``mlm_targets`` (B·M × num_target_codebooks
        code ids: the quantizer's Gumbel draws in training, its argmax in eval) and ``padding_mask``."""
        if features_only:
            return self.extract_features(source, padding_mask, mask=mask, layer=layer)
        if self.quantizer is None:
            raise ValueError("the pretraining heads were removed (remove_pretraining_modules): call the model with "
                             "features_only=True")
        self.cfg._check_pretraining()
        features, padding_mask = self.forward_frontend(source, padding_mask)
        out = self.encode(features, padding_mask, mask=mask)
        if out["mask_indices"] is None:
            raise ValueError("the w2v-BERT pretraining forward needs masked frames: call with mask=True and "
                             "model.mask_prob > 0")
        result, code_ids = self._quantize_and_contrast(out)
        result.update(self._masked_prediction(out, code_ids))
        result.update(features_pen=features.float().pow(2).mean(), padding_mask=out["padding_mask"])
        return result

    def _quantize_and_contrast(self, out: Dict[str, Any]) -> Tuple[Dict[str, Any], torch.Tensor]:
        """fairseq2's ``quantize_and_contrast`` on the masked frames: (contrastive logits and the quantizer's
        statistics, the quantizer's code ids B×M×G)."""
        q = self.quantizer(masked_frames(out["features_unprojected"], out["mask_indices"]), produce_targets=True)
        y = self.project_q(q["x"])
        negatives, _ = sample_negatives(y, y.size(1), self.cfg.num_negatives)
        contrast_layer = self.cfg.encoder_layers - self.cfg.num_bert_encoder_layers - 1
        x = self.final_proj(masked_frames(out["layer_results"][contrast_layer][0], out["mask_indices"]))
        result = {k: q[k] for k in ("num_vars", "code_perplexity", "prob_perplexity", "temp")}
        result["x"] = contrastive_logits(x, y, negatives, self.cfg.logit_temp)
        return result, q["targets"]

    def _masked_prediction(self, out: Dict[str, Any], code_ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``mlm_proj`` of the top layer's masked frames and their targets, the first ``num_target_codebooks``
        code ids (fairseq2's ``final_bert_proj`` and ``_get_target_indices``)."""
        groups = self.cfg.num_target_codebooks
        logits = self.mlm_proj(masked_frames(out["x"], out["mask_indices"]))
        return {"mlm_logits": logits.reshape(-1, self.cfg.latent_vars, groups),
                "mlm_targets": code_ids.reshape(-1, code_ids.size(-1))[:, :groups]}

    # the contrastive part is wav2vec 2.0's: the criterion reads it the same way
    get_logits = Wav2Vec2Model.get_logits
    get_targets = Wav2Vec2Model.get_targets
    get_extra_losses = Wav2Vec2Model.get_extra_losses
    #: the names of ``get_extra_losses``' terms, in order (the criterion logs ``loss_<name>``)
    extra_loss_names = ("diversity", "features_pen")

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
        """A state dict without any pretraining head (an HF conversion: HF's converter drops the quantizer and the
        projections, transformers PR #28165) gets this model's freshly initialised heads, with one warning."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        heads = {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in PRETRAINING_HEADS}
        if heads and not any(k[len(prefix):].split(".", 1)[0] in PRETRAINING_HEADS
                             for k in state_dict if k.startswith(prefix)):
            logger.warning("the w2v_bert weights have no pretraining heads (%s): initialised their %d tensors "
                           "freshly, as for continued pretraining from a Hugging Face conversion (HF keeps no "
                           "quantizer)", ", ".join(PRETRAINING_HEADS), len(heads))
            state_dict.update({prefix + k: v for k, v in heads.items()})
        return state_dict

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """For fine-tuning: drop the pretraining heads (they stay registered as None, so a pretraining state dict
        still loads strictly) and keep the layers up to ``last_layer`` (0-based; all by default)."""
        for head in PRETRAINING_HEADS:
            setattr(self, head, None)
        if last_layer is not None:
            self.encoder.layers = nn.ModuleList(l for i, l in enumerate(self.encoder.layers) if i <= last_layer)
