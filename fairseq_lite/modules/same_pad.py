"""Trim the extra frame an even-kernel "same" convolution produces (fairseq's ``SamePad``)."""

import torch
from torch import nn


class SamePad(nn.Module):
    """Drop the last ``1`` frame (even kernel) or none (odd kernel), or ``kernel - 1`` frames if causal."""

    def __init__(self, kernel_size: int, causal: bool = False):
        super().__init__()
        self.remove = kernel_size - 1 if causal else (1 if kernel_size % 2 == 0 else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove > 0 else x
