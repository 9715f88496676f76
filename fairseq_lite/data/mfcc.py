"""Kaldi-style MFCC + Δ + ΔΔ, the 39-dim features of HuBERT's first iteration (fairseq's dump_mfcc_feature.py).

fairseq calls ``torchaudio.compliance.kaldi.mfcc`` with its defaults (Kaldi's ``compute-mfcc-feats`` options:
13 cepstra, 23 mel bins from 20 Hz to Nyquist, 25 ms frames every 10 ms with ``snip_edges``, the frame's DC
offset removed, pre-emphasis 0.97, the povey window, a 512-point FFT, power spectrum, log mel energies floored at
float32's epsilon, DCT, cepstral lifter 22, dither 0, no energy) on the float waveform in [-1, 1], then
``torchaudio.functional.compute_deltas`` (window 5, edges replicated) twice. This module computes the same in
torch, checked against kaldi-native-fbank and genuine fairseq's output in tests/test_hubert_units.py.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import numpy as np
import torch

#: fairseq's MFCC layout: 13 cepstra, then their deltas, then the deltas of the deltas.
NUM_CEPS = 13
NUM_MEL_BINS = 23
MFCC_DIM = 3 * NUM_CEPS
FLOAT_EPSILON = float(np.finfo(np.float32).eps)


def mel_scale(freq: np.ndarray) -> np.ndarray:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(sample_rate: int, fft_size: int, num_bins: int = NUM_MEL_BINS, low_freq: float = 20.0,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, num_bins × (fft_size // 2 + 1), equally spaced on the mel scale between
    ``low_freq`` and ``high_freq`` (≤ 0: that far below Nyquist); the Nyquist bin gets no weight, as in Kaldi."""
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = mel_scale(np.arange(fft_size // 2) * sample_rate / fft_size)[None, :]
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    weights = np.where(mel <= center, rising, falling) * ((mel > left) & (mel < right))
    banks = np.zeros((num_bins, fft_size // 2 + 1))
    banks[:, : fft_size // 2] = weights
    return torch.from_numpy(banks)


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


def povey_window(length: int) -> torch.Tensor:
    """Kaldi's default window: a Hann window raised to the power 0.85."""
    i = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * i / (length - 1))).pow(0.85)


def frames_of(waveform: torch.Tensor, frame_length: int, frame_shift: int) -> torch.Tensor:
    """num_frames × frame_length windows of a 1-D waveform with Kaldi's ``snip_edges``: only whole frames, the
    first starting at sample 0."""
    if waveform.numel() < frame_length:
        return waveform.new_zeros((0, frame_length))
    return waveform.unfold(0, frame_length, frame_shift)


def kaldi_mfcc(waveform: Union[np.ndarray, torch.Tensor], sample_rate: int = 16000,
               preemphasis: float = 0.97) -> torch.Tensor:
    """T × 13 float32 MFCCs of a mono waveform, as ``torchaudio.compliance.kaldi.mfcc(waveform,
    sample_frequency=sample_rate, use_energy=False)`` (fairseq's call): T = 1 + (L − 25 ms) // 10 ms frames, none
    for audio shorter than one frame. Computed in float64 (the float32 implementations differ from it by ~1e-3)."""
    wav = torch.as_tensor(waveform).reshape(-1).double()
    frame_length = int(sample_rate * 0.025)
    frames = frames_of(wav, frame_length, int(sample_rate * 0.010))
    if len(frames) == 0:
        return torch.zeros((0, NUM_CEPS))
    frames = frames - frames.mean(dim=1, keepdim=True)
    emphasized = torch.cat([frames[:, :1] * (1 - preemphasis), frames[:, 1:] - preemphasis * frames[:, :-1]], dim=1)
    fft_size = 1 << (frame_length - 1).bit_length()
    spectrum = torch.fft.rfft(emphasized * povey_window(frame_length), n=fft_size)
    power = spectrum.real.square() + spectrum.imag.square()
    log_mel = (power @ mel_banks(sample_rate, fft_size).T).clamp(min=FLOAT_EPSILON).log()
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
