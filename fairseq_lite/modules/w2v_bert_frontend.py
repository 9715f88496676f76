"""The w2v-BERT 2.0 front end: HF ``SeamlessM4TFeatureExtractor`` (what ``facebook/w2v-bert-2.0`` ships as its
preprocessor) as a torch module, batched and padding-aware, on any device.

For each utterance, on its own valid samples only: the waveform × 2^15 (Kaldi's 16-bit scale), 80-bin Kaldi fbank
(25/10 ms frames with ``snip_edges``, povey window, pre-emphasis 0.97, dither 0, 512-point FFT, log floored at
float32's epsilon), then each mel bin normalised to zero mean and unit variance (ddof=1, + 1e-7) over the
utterance's frames. The batch is padded with ``padding_value`` to its longest frame count rounded up to a multiple
of ``stride`` (HF's ``pad_to_multiple_of=2``) and every ``stride`` frames stacked (80 × 2 = 160 dims at 50 Hz). The
padding mask is HF's attention mask subsampled at the last frame of each stack, so an utterance of n frames keeps
n // stride positions (with n odd its last frame sits in the first stack marked as padding, as in HF).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from fairseq_lite.modules.kaldi_features import kaldi_fbank, num_frames

#: Kaldi's int16 scale that SeamlessM4TFeatureExtractor applies to the float waveform
INT16_SCALE = 2.0 ** 15
#: the variance offset of SeamlessM4TFeatureExtractor's per-mel-bin normalisation
VARIANCE_EPSILON = 1e-7


class W2vBertFbankFrontend(nn.Module):
    """Waveforms (B × T in [-1, 1]) to w2v-BERT input features (B × T' × num_mel_bins·stride float32), with the
    defaults of HF SeamlessM4TFeatureExtractor and the ``padding_value=1.0`` its w2v-BERT converter saves.
    ``dtype``: what the fbank is computed in, float64 as HF's numpy code (float32 for devices without float64,
    e.g. MPS: ~2e-4 off HF, in quiet mel bins)."""

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 80, stride: int = 2,
                 padding_value: float = 1.0, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                 preemphasis: float = 0.97, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.stride = stride
        self.padding_value = padding_value
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.preemphasis = preemphasis
        self.dtype = dtype
        self.frame_length = int(sample_rate * frame_length_ms / 1000)
        self.frame_shift = int(sample_rate * frame_shift_ms / 1000)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Kaldi fbank frames (``snip_edges``) of utterances of ``num_samples`` samples."""
        return num_frames(num_samples, self.frame_length, self.frame_shift)

    def output_lengths(self, num_samples: torch.LongTensor) -> torch.LongTensor:
        """T' of each utterance: its kaldi frames // stride (the sum of HF's subsampled attention mask; the batch
        itself has ceil(longest frames / stride) positions)."""
        return self.frame_lengths(num_samples) // self.stride

    def normalized_fbank(self, source: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """B × N × num_mel_bins float32 fbank normalised per utterance and mel bin over its first
        ``frame_lengths[b]`` frames (the only ones computed from its samples alone); later frames = padding_value."""
        longest = int(frame_lengths.max()) if frame_lengths.numel() else 0
        needed = 0 if longest == 0 else self.frame_length + (longest - 1) * self.frame_shift
        wav = source[:, :needed].to(self.dtype) * INT16_SCALE
        fbank = kaldi_fbank(wav, self.sample_rate, self.num_mel_bins, self.frame_length_ms, self.frame_shift_ms,
                            self.preemphasis)
        valid = (torch.arange(longest, device=source.device)[None, :] < frame_lengths[:, None])[..., None]
        count = frame_lengths.to(fbank.dtype)[:, None, None]
        mean = fbank.masked_fill(~valid, 0).sum(dim=1, keepdim=True) / count.clamp(min=1)
        centered = (fbank - mean).masked_fill(~valid, 0)
        variance = centered.square().sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        normalized = centered / torch.sqrt(variance + VARIANCE_EPSILON)
        return normalized.float().masked_fill(~valid, self.padding_value)

    def forward(self, source: torch.Tensor,
                padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(features B × T' × num_mel_bins·stride, feature padding mask B × T' True at padding, or None when
        ``padding_mask`` is None) of waveforms ``source`` B × T with ``padding_mask`` B × T True at padding."""
        if source.dim() != 2:
            raise ValueError(f"W2vBertFbankFrontend expects B x T waveforms, got shape {tuple(source.shape)}")
        num_samples = (source.new_full((source.size(0),), source.size(1), dtype=torch.long) if padding_mask is None
                       else (~padding_mask).long().sum(dim=1))
        frame_lengths = self.frame_lengths(num_samples)
        fbank = self.normalized_fbank(source, frame_lengths)
        batch, frames, bins = fbank.shape
        stacked = -(-frames // self.stride)
        fbank = nn.functional.pad(fbank, (0, 0, 0, stacked * self.stride - frames), value=self.padding_value)
        features = fbank.reshape(batch, stacked, bins * self.stride)
        if padding_mask is None:
            return features, None
        lengths = frame_lengths // self.stride
        return features, torch.arange(stacked, device=source.device)[None, :] >= lengths[:, None]
