"""CTC fine-tuning of w2v-BERT 2.0: the ``w2v_bert_ctc`` model (HF ``Wav2Vec2BertForCTC``).

The network of ``wav2vec_ctc`` (``Wav2VecEncoder`` around the pretrained ``w2v_bert`` model, ``proj`` onto the
target dictionary, keys ``w2v_encoder.w2v_model.*`` / ``w2v_encoder.proj.*``) with wav2vec 2.0's fine-tuning
options that apply to it: ``freeze_finetune_updates``, ``freeze_regex``, time and channel masking of the projected
features (``apply_mask``, ``mask_*``, ``mask_channel_*``; HF's SpecAugment ``mask_time_*`` / ``mask_feature_*``),
``layerdrop`` and the dropouts, and HF's adapter (``add_adapter``: ``W2vBertAdapter`` between the encoder and
``proj``, keys ``w2v_encoder.adapter.*``, HF's ``wav2vec2_bert.adapter.*``). The task is ``audio_finetuning`` with ``normalize: false``: the fbank front end
takes the waveform as loaded and normalises each utterance's features itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from fairseq_lite.dataclass import FairseqDataclass, field_like, help_text, II
from fairseq_lite.models import register_model
from fairseq_lite.models.wav2vec.wav2vec2 import MASKING_DISTRIBUTION_CHOICES
from fairseq_lite.models.wav2vec.wav2vec2_asr import BLANK_MODE_CHOICES, Wav2Vec2CtcConfig, Wav2VecCtc
from fairseq_lite.modules.w2v_bert_adapter import W2vBertAdapter

#: The field of ``Wav2Vec2CtcConfig`` named ``name``.
_asr = functools.partial(field_like, Wav2Vec2CtcConfig)


@dataclass
class W2vBertCtcConfig(FairseqDataclass):
    """wav2vec 2.0's CTC fine-tuning options that mean the same for w2v-BERT (no CNN: no ``feature_grad_mult``,
    no ``conv_feature_layers``, no ``layer_type``)."""

    w2v_path: str = _asr("w2v_path")
    no_pretrained_weights: bool = _asr("no_pretrained_weights")
    dropout_input: float = _asr("dropout_input")
    final_dropout: float = _asr("final_dropout")
    dropout: float = _asr("dropout")
    attention_dropout: float = _asr("attention_dropout")
    activation_dropout: float = _asr("activation_dropout")
    apply_mask: bool = _asr("apply_mask")
    mask_length: int = _asr("mask_length")
    mask_prob: float = _asr("mask_prob")
    mask_selection: MASKING_DISTRIBUTION_CHOICES = _asr("mask_selection")
    mask_other: float = _asr("mask_other")
    no_mask_overlap: bool = _asr("no_mask_overlap")
    mask_min_space: Optional[int] = _asr("mask_min_space")
    require_same_masks: bool = _asr("require_same_masks")
    mask_dropout: float = _asr("mask_dropout")
    mask_channel_length: int = _asr("mask_channel_length")
    mask_channel_prob: float = _asr("mask_channel_prob")
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = _asr("mask_channel_selection")
    mask_channel_other: float = _asr("mask_channel_other")
    no_mask_channel_overlap: bool = _asr("no_mask_channel_overlap")
    mask_channel_min_space: Optional[int] = _asr("mask_channel_min_space")
    mask_channel_before: bool = _asr("mask_channel_before")
    freeze_finetune_updates: int = _asr("freeze_finetune_updates")
    layerdrop: float = _asr("layerdrop")
    checkpoint_activations: bool = _asr("checkpoint_activations")
    freeze_regex: Optional[str] = _asr("freeze_regex")
    blank_weight: float = _asr("blank_weight")
    blank_mode: BLANK_MODE_CHOICES = _asr("blank_mode")
    normalize: bool = II("task.normalize")
    data: str = II("task.data")
    w2v_args: Any = _asr("w2v_args")
    add_adapter: bool = field(default=False, metadata=help_text(
        "HF's convolutional adapter between the encoder and the output layer (add_adapter)"))
    adapter_kernel_size: int = field(default=3, metadata=help_text("kernel of the adapter convolutions"))
    adapter_stride: int = field(default=2, metadata=help_text("time stride of each adapter layer"))
    num_adapter_layers: int = field(default=1, metadata=help_text("adapter layers"))
    output_hidden_size: int = field(default=0, metadata=help_text(
        "width of the adapter (HF output_hidden_size; 0: the encoder's)"))


@register_model("w2v_bert_ctc", dataclass=W2vBertCtcConfig)
class W2vBertCtc(Wav2VecCtc):
    """w2v-BERT 2.0 with a CTC output layer over the task's target dictionary (blank = index 0, ``<s>``)."""

    pretrained_model = "w2v_bert"

    @classmethod
    def build_model(cls, cfg: W2vBertCtcConfig, task: Any = None) -> "W2vBertCtc":
        """``Wav2VecCtc``'s model, with HF's adapter before ``proj`` when ``add_adapter`` is set."""
        model = super().build_model(cfg, task)
        if cfg.add_adapter:
            backbone = model.w2v_encoder.w2v_model.cfg
            width = cfg.output_hidden_size or backbone.encoder_embed_dim
            adapter = W2vBertAdapter(
                backbone.encoder_embed_dim, width, backbone.encoder_ffn_embed_dim, backbone.encoder_attention_heads,
                num_layers=cfg.num_adapter_layers, kernel_size=cfg.adapter_kernel_size, stride=cfg.adapter_stride,
                layerdrop=cfg.layerdrop, dropout=backbone.conformer_conv_dropout,
                attention_dropout=cfg.attention_dropout, hidden_dropout=cfg.dropout,
                activation_dropout=cfg.activation_dropout)
            model.w2v_encoder.attach_adapter(adapter, width)
        return model
