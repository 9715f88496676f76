"""``TransposeLast``: lets a LayerNorm act on the channel axis of B×C×T input (fairseq's ``TransposeLast``)."""

import torch
from torch import nn


class TransposeLast(nn.Module):
    """Swap the last two axes (B×C×T ↔ B×T×C); no parameters, keeps fairseq's Sequential indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)
