"""Kaldi-style MFCC + Δ + ΔΔ, the 39-dim features of HuBERT's first iteration (fairseq's dump_mfcc_feature.py).

fairseq calls ``torchaudio.compliance.kaldi.mfcc`` with its defaults (Kaldi's ``compute-mfcc-feats`` options:
13 cepstra, 23 mel bins from 20 Hz to Nyquist, 25 ms frames every 10 ms with ``snip_edges``, the frame's DC
offset removed, pre-emphasis 0.97, the povey window, a 512-point FFT, power spectrum, log mel energies floored at
float32's epsilon, DCT, cepstral lifter 22, dither 0, no energy) on the float waveform in [-1, 1], then
``torchaudio.functional.compute_deltas`` (window 5, edges replicated) twice. This module computes the same in
torch from the Kaldi pieces of modules/kaldi_features.py, checked against kaldi-native-fbank and genuine fairseq's
output in tests/test_hubert_units.py.
"""

from __future__ import annotations

import functools
from typing import Union

import numpy as np
import torch

from fairseq_lite.modules.kaldi_features import kaldi_fbank

#: fairseq's MFCC layout: 13 cepstra, then their deltas, then the deltas of the deltas.
NUM_CEPS = 13
NUM_MEL_BINS = 23
MFCC_DIM = 3 * NUM_CEPS


@functools.lru_cache(maxsize=4)
def dct_lifter_matrix(num_bins: int = NUM_MEL_BINS, num_ceps: int = NUM_CEPS, lifter: float = 22.0) -> torch.Tensor:
    """num_bins × num_ceps: Kaldi's orthonormal DCT-II (first row √(1/N)) with the cepstral lifter
    1 + (Q/2) sin(π i / Q) folded in, applied as ``log_mel @ matrix``."""
    n = np.arange(num_bins)[:, None] + 0.5
    k = np.arange(num_ceps)[None, :]
    dct = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * n * k)
    dct[:, 0] = np.sqrt(1.0 / num_bins)
    liftering = 1.0 + 0.5 * lifter * np.sin(np.pi * np.arange(num_ceps) / lifter)
    return torch.from_numpy(dct * liftering[None, :])


def kaldi_mfcc(waveform: Union[np.ndarray, torch.Tensor], sample_rate: int = 16000,
               preemphasis: float = 0.97) -> torch.Tensor:
    """T × 13 float32 MFCCs of a mono waveform, as ``torchaudio.compliance.kaldi.mfcc(waveform,
    sample_frequency=sample_rate, use_energy=False)`` (fairseq's call): T = 1 + (L − 25 ms) // 10 ms frames, none
    for audio shorter than one frame. Computed in float64 (the float32 implementations differ from it by ~1e-3)."""
    wav = torch.as_tensor(waveform).reshape(-1).double()
    log_mel = kaldi_fbank(wav, sample_rate, NUM_MEL_BINS, preemphasis=preemphasis)
    if len(log_mel) == 0:
        return torch.zeros((0, NUM_CEPS))
    return (log_mel @ dct_lifter_matrix()).float()


def compute_deltas(features: torch.Tensor, win_length: int = 5) -> torch.Tensor:
    """Δ of ``features`` (…, time) along time, ``torchaudio.functional.compute_deltas``: Σₖ k·x[t+k] / Σₖ k²
    for k in −n…n (n = (win_length − 1) // 2), the first and last frames repeated past the edges."""
    n = (win_length - 1) // 2
    time = features.size(-1)
    padded = torch.cat([features[..., :1].expand(*features.shape[:-1], n), features,
                        features[..., -1:].expand(*features.shape[:-1], n)], dim=-1)
    deltas = sum(k * (padded[..., n + k: n + k + time] - padded[..., n - k: n - k + time]) for k in range(1, n + 1))
    return deltas / (2 * sum(k * k for k in range(1, n + 1)))


def mfcc_with_deltas(waveform: Union[np.ndarray, torch.Tensor], sample_rate: int = 16000) -> torch.Tensor:
    """T × 39 float32 features of fairseq's dump_mfcc_feature.py: 13 MFCCs, their Δ and their ΔΔ, 100 per second."""
    mfccs = kaldi_mfcc(waveform, sample_rate).T  # (ceps, time)
    if mfccs.size(1) == 0:
        return torch.zeros((0, MFCC_DIM))
    deltas = compute_deltas(mfccs)
    return torch.cat([mfccs, deltas, compute_deltas(deltas)], dim=0).T.contiguous()
