"""Transformer-layer features of a wav2vec 2.0, HuBERT or w2v-BERT 2.0 checkpoint (scripts/extract_features.py and
fairseq's examples/hubert/simple_kmeans/dump_hubert_feature.py / dump_w2v2_feature.py).

A checkpoint is loaded with ``load_model_ensemble_and_task``; a CTC fine-tuned one (``wav2vec_ctc``,
``hubert_ctc``, ``w2v_bert_ctc``) gives the model it wraps. Layers are counted as each caller names them: 0-based for
``encoder_outputs`` (wav2vec 2.0's ``extract_features(layer=i)``), 1-based for ``layer_features`` (HuBERT's
``output_layer``, which fairseq's dump scripts use for both families).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fairseq_lite.checkpoint_utils import load_model_ensemble_and_task
from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.inference_precision import autocast
from fairseq_lite.models.hubert.hubert import HubertModel
from fairseq_lite.models.w2v_bert.w2v_bert import W2vBertModel
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Model
from fairseq_lite.modules.conv_feature_extractor import receptive_field


def load_encoder(path: str, device: torch.device) -> Tuple[torch.nn.Module, bool, int]:
    """The wav2vec 2.0, HuBERT or w2v-BERT model of a pretrained or CTC checkpoint (eval mode, on ``device``),
    whether its task normalises the waveform (``task.normalize``) and its sample rate (``task.sample_rate``)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    models, cfg, _ = load_model_ensemble_and_task([path])
    model = models[0]
    encoder = getattr(getattr(model, "w2v_encoder", None), "w2v_model", model)  # the CTC models wrap it
    if not isinstance(encoder, (Wav2Vec2Model, HubertModel, W2vBertModel)):
        raise CheckpointError(f"{path} holds a {type(model).__name__}: this reads wav2vec 2.0, HuBERT and w2v-BERT "
                              "models; use examples/wav2vec/wav2vec_featurize.py for wav2vec 1.0")
    return encoder.eval().to(device), bool(getattr(cfg.task, "normalize", False)), int(cfg.task.sample_rate)


def encoder_outputs(model: torch.nn.Module, source: torch.Tensor, padding_mask: Optional[torch.Tensor],
                    layer: Optional[int]) -> Dict[str, Any]:
    """``x`` after 0-based ``layer`` (None: the model's final output) and ``layer_results`` up to it, unmasked,
    for either family (HuBERT's ``output_layer`` is ``layer + 1``)."""
    if isinstance(model, HubertModel):
        return model(source, padding_mask=padding_mask, mask=False, features_only=True,
                     output_layer=None if layer is None else layer + 1)
    return model.extract_features(source, padding_mask, mask=False, layer=layer)


def padding_changes_features(model: torch.nn.Module) -> bool:
    """Whether batching padded utterances changes their features: a group-norm CNN (Base's ``extractor_mode:
    default``) normalises over the padding too; layer-norm CNNs and w2v-BERT's per-utterance fbank do not."""
    extractor = getattr(model, "feature_extractor", None)
    return bool(getattr(extractor, "norm_sees_padding", False))


def min_input_samples(model: torch.nn.Module) -> int:
    """The shortest waveform the model's CNN turns into one frame (its receptive field: 400 samples for fairseq's);
    for w2v-BERT, the samples of ``stride`` fbank frames (560 at 16 kHz)."""
    if isinstance(model, W2vBertModel):
        frontend = model.frontend
        return frontend.frame_length + (frontend.stride - 1) * frontend.frame_shift
    return receptive_field(model.feature_extractor.conv_specs)


def output_frames(model: torch.nn.Module, num_samples: torch.Tensor) -> torch.Tensor:
    """Encoder frames of waveforms of ``num_samples`` samples (the CNN's, or w2v-BERT's fbank front end's)."""
    extractor = model.frontend if isinstance(model, W2vBertModel) else model.feature_extractor
    return extractor.output_lengths(num_samples)


def check_layer(model: torch.nn.Module, layer: int) -> None:
    """A 1-based layer (fairseq's ``output_layer``) must exist in the model."""
    count = len(model.encoder.layers)
    if not 1 <= layer <= count:
        raise ConfigError(f"layer {layer}: the model has {count} transformer layers; give one in 1..{count}")


def chunk_starts(num_samples: int, max_chunk: int, min_chunk: int) -> List[int]:
    """Where fairseq's ``max_chunk`` pieces start; a last piece shorter than ``min_chunk`` (too short for the
    CNN, where fairseq fails) joins the one before it."""
    starts = list(range(0, num_samples, max_chunk))
    if len(starts) > 1 and num_samples - starts[-1] < min_chunk:
        starts.pop()
    return starts


@torch.inference_mode()
def layer_features(model: torch.nn.Module, wav: np.ndarray, layer: int, normalize: bool,
                   max_chunk: int = 1_600_000, precision: str = "fp32") -> torch.Tensor:
    """T×D output of 1-based ``layer`` for one waveform, as fairseq's dump_hubert_feature.py computes it: the
    whole waveform layer-normed when the task normalises, then cut into pieces of at most ``max_chunk`` samples
    run one by one (bounded memory for long audio) and their frames concatenated. On the model's device, at
    ``precision`` (fp32, or fp16/bf16 autocast)."""
    if max_chunk < 1:
        raise ConfigError(f"--max_chunk must be ≥ 1 sample, got {max_chunk}")
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(device)
    if normalize:
        x = F.layer_norm(x, x.shape)
    x = x.view(1, -1)
    starts = chunk_starts(x.size(1), max_chunk, min_input_samples(model))
    ends = starts[1:] + [x.size(1)]
    with autocast(device, precision):
        pieces = [encoder_outputs(model, x[:, start:end], None, layer - 1)["x"] for start, end in zip(starts, ends)]
    return torch.cat(pieces, dim=1).squeeze(0)
