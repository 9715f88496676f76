"""Kaldi's feature pipeline pieces (``compute-fbank-feats`` / ``compute-mfcc-feats``), shared by the MFCC labels of
HuBERT (data/mfcc.py) and the w2v-BERT fbank front end (modules/w2v_bert_frontend.py).

Kaldi's defaults as ``torchaudio.compliance.kaldi`` and kaldi-native-fbank have them: frames with ``snip_edges``
(only whole frames, the first at sample 0), each frame's DC offset removed, pre-emphasis, the povey window, a
zero-padded power-of-two FFT, the power spectrum, triangular mel filters and log energies floored at float32's
epsilon. Everything is computed in the dtype of the input.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

#: the floor of Kaldi's log mel energies (float32's epsilon)
FLOAT_EPSILON = float(np.finfo(np.float32).eps)


def mel_scale(freq: np.ndarray) -> np.ndarray:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(sample_rate: int, fft_size: int, num_bins: int, low_freq: float = 20.0,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, num_bins × (fft_size // 2 + 1) float64, equally spaced on the mel scale
    between ``low_freq`` and ``high_freq`` (≤ 0: that far below Nyquist); the Nyquist bin gets no weight."""
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


def povey_window(length: int) -> torch.Tensor:
    """Kaldi's default window (float64): a Hann window raised to the power 0.85."""
    i = torch.arange(length, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * i / (length - 1))).pow(0.85)


def num_frames(num_samples, frame_length: int, frame_shift: int):
    """Kaldi's frame count with ``snip_edges``: 1 + (L − frame_length) // frame_shift, 0 below one frame (ints or
    an integer tensor)."""
    if isinstance(num_samples, torch.Tensor):
        return torch.where(num_samples < frame_length, 0, 1 + (num_samples - frame_length) // frame_shift)
    return 0 if num_samples < frame_length else 1 + (num_samples - frame_length) // frame_shift


def frames_of(waveform: torch.Tensor, frame_length: int, frame_shift: int) -> torch.Tensor:
    """(…) × num_frames × frame_length windows of (…) × L waveforms with Kaldi's ``snip_edges``."""
    if waveform.size(-1) < frame_length:
        return waveform.new_zeros((*waveform.shape[:-1], 0, frame_length))
    return waveform.unfold(-1, frame_length, frame_shift)


def power_spectrum(frames: torch.Tensor, preemphasis: float = 0.97) -> torch.Tensor:
    """(…) × (fft_size // 2 + 1) power spectra of (…) × frame_length frames: DC offset removed, pre-emphasis (the
    first sample against itself, as Kaldi), the povey window, an FFT zero-padded to the next power of two."""
    frame_length = frames.size(-1)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    emphasized = torch.cat([frames[..., :1] * (1 - preemphasis), frames[..., 1:] - preemphasis * frames[..., :-1]],
                           dim=-1)
    window = povey_window(frame_length).to(device=frames.device, dtype=frames.dtype)
    spectrum = torch.fft.rfft(emphasized * window, n=1 << (frame_length - 1).bit_length())
    return spectrum.real.square() + spectrum.imag.square()


def kaldi_fbank(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 23,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, preemphasis: float = 0.97,
                low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """(…) × num_frames × num_mel_bins log mel energies of (…) × L waveforms, Kaldi's ``compute-fbank-feats``
    (``torchaudio.compliance.kaldi.fbank``) with dither 0 and no energy, in the waveform's dtype."""
    frame_length = int(sample_rate * frame_length_ms / 1000)
    frames = frames_of(waveform, frame_length, int(sample_rate * frame_shift_ms / 1000))
    if frames.size(-2) == 0:  # shorter than one frame (an empty FFT is an error)
        return waveform.new_zeros((*frames.shape[:-1], num_mel_bins))
    power = power_spectrum(frames, preemphasis)
    fft_size = 2 * (power.size(-1) - 1)
    banks = mel_banks(sample_rate, fft_size, num_mel_bins, low_freq, high_freq)
    return (power @ banks.T.to(device=power.device, dtype=power.dtype)).clamp(min=FLOAT_EPSILON).log()
