"""Rotary position embedding of the rope conformer (fairseq's ``RotaryPositionalEmbedding``)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryPositionalEmbedding(nn.Module):
    """cos/sin tables for rotary embeddings over ``dim`` channels (fairseq's ``rotary_emb``, base 10000).

    Keeps fairseq's persistent ``inv_freq`` buffer (state-dict key ``...self_attn.rotary_emb.inv_freq``).
    Tables are always computed in fp32 — even when the module was cast to fp16/bf16, which in fairseq
    rounds positions above 2048 — and returned in the dtype the caller asks for.
    """

    def __init__(self, dim: int, base: int = 10000):
        super().__init__()
        self.dim = dim
        self.base = base
        self.register_buffer("inv_freq", self._inv_freq(), persistent=True)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None

    def _inv_freq(self, device=None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim
        return 1.0 / (self.base**exponents)

    def forward(self, seq_len: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin)``, each ``seq_len x dim``, in ``dtype``."""
        if self._cos is None or self._cos.device != device or self._cos.size(0) < seq_len:
            # inv_freq is recomputed in fp32 rather than read from the buffer, which may have been cast down
            positions = torch.arange(seq_len, device=device, dtype=torch.float32)
            angles = torch.outer(positions, self._inv_freq(device))
            angles = torch.cat((angles, angles), dim=-1)
            self._cos, self._sin = angles.cos(), angles.sin()
        return self._cos[:seq_len].to(dtype), self._sin[:seq_len].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last axis of ``x`` by ``cos``/``sin`` (from ``RotaryPositionalEmbedding``, broadcastable to ``x``)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin
