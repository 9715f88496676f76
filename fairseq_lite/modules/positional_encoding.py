"""Sinusoidal relative positional encoding of the rel_pos conformer (fairseq's ``RelPositionalEncoding``)."""

from __future__ import annotations

import math

import torch
from torch import nn


class RelPositionalEncoding(nn.Module):
    """Sinusoidal encodings of the relative positions ``T-1, T-2, ..., -(T-1)`` for a length-T input.

    Mirrors fairseq's ``RelPositionalEncoding(max_len, d_model)`` used by ``pos_enc_type=rel_pos``: row ``c``
    encodes relative position ``T-1-c`` as interleaved ``sin, cos`` of ``position * 10000^(-2i/d_model)``.
    The table is not a parameter or buffer (nothing in the state dict). fairseq precomputes it for
    ``max_len`` (= ``max_positions``, 100000: a 2*10^5 x d_model table); here it is computed in fp32 for the
    lengths actually seen, cached, and returned in the input's dtype.
    """

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len = max_len
        self.d_model = d_model
        self._table: torch.Tensor | None = None  # fp32, rows for positions L-1 .. -(L-1)

    def _extend(self, length: int, device: torch.device) -> torch.Tensor:
        table = self._table
        if table is None or table.device != device or table.size(0) < 2 * length - 1:
            positions = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
            inv_freq = torch.exp(
                torch.arange(0, self.d_model, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / self.d_model)
            )
            angles = positions[:, None] * inv_freq[None, :]
            table = torch.empty(2 * length - 1, self.d_model, device=device, dtype=torch.float32)
            table[:, 0::2] = torch.sin(angles)
            table[:, 1::2] = torch.cos(angles[:, : self.d_model // 2])
            self._table = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x T x C. Returns the (2T-1) x C encodings of positions T-1 .. -(T-1), in ``x``'s dtype."""
        length = x.size(1)
        table = self._extend(length, x.device)
        center = table.size(0) // 2
        return table[center - length + 1 : center + length].to(x.dtype)
