"""CTC fine-tuning of HuBERT (fairseq's ``models/hubert/hubert_asr.py``): the ``hubert_ctc`` model.

The same network as ``wav2vec_ctc`` (``Wav2VecEncoder`` around the pretrained model, ``proj`` onto the target
dictionary, fairseq's keys ``w2v_encoder.w2v_model.*`` / ``w2v_encoder.proj.*``) over a HuBERT pretraining
checkpoint, with fairseq's smaller ``HubertAsrConfig``. Differences from fairseq, each a fix: padded frames are
forced to blank in ``get_logits`` (fairseq's assignment there writes into a copy and does nothing); a wav2vec 2.0
checkpoint given as ``w2v_path`` is refused with the model to use; the pretraining weights load strictly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from fairseq_lite.dataclass import FairseqDataclass, field_like, II
from fairseq_lite.models import register_model
from fairseq_lite.models.wav2vec.wav2vec2 import MASKING_DISTRIBUTION_CHOICES
from fairseq_lite.models.wav2vec.wav2vec2_asr import Wav2Vec2AsrConfig, Wav2VecCtc


#: The field of ``Wav2Vec2AsrConfig`` named ``name`` (HuBERT's fine-tuning options are a subset of it).
_asr = functools.partial(field_like, Wav2Vec2AsrConfig)


@dataclass
class HubertAsrConfig(FairseqDataclass):
    """Every field of fairseq's ``HubertAsrConfig`` with its default, plus fairseq_lite's ``freeze_regex``."""

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
    mask_channel_length: int = _asr("mask_channel_length")
    mask_channel_prob: float = _asr("mask_channel_prob")
    mask_channel_selection: MASKING_DISTRIBUTION_CHOICES = _asr("mask_channel_selection")
    mask_channel_other: float = _asr("mask_channel_other")
    no_mask_channel_overlap: bool = _asr("no_mask_channel_overlap")
    freeze_finetune_updates: int = _asr("freeze_finetune_updates")
    feature_grad_mult: float = _asr("feature_grad_mult")
    layerdrop: float = _asr("layerdrop")
    normalize: bool = II("task.normalize")
    data: str = II("task.data")
    w2v_args: Any = _asr("w2v_args")
    freeze_regex: Optional[str] = _asr("freeze_regex")


@dataclass
class HubertCtcConfig(HubertAsrConfig):
    """fairseq's ``HubertCtcConfig`` (nothing beyond ``HubertAsrConfig``)."""


@register_model("hubert_ctc", dataclass=HubertCtcConfig)
class HubertCtc(Wav2VecCtc):
    """HuBERT with a CTC output layer over the task's target dictionary (blank = index 0, ``<s>``)."""

    pretrained_model = "hubert"
    fine_tuning_task = "task._name=hubert_pretraining with task.fine_tuning=true task.single_target=true"

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, model_cfg: Any = None):
        """Load fine-tuned weights; the frozen, unused ``label_embs_concat`` fairseq keeps in them is adopted."""
        self.w2v_encoder.w2v_model.adopt_label_embeddings(state_dict.get("w2v_encoder.w2v_model.label_embs_concat"))
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg)
