"""HF's w2v-BERT adapter (``Wav2Vec2BertAdapter``, ``add_adapter=True``, used by HF's fine-tuning blog): convolutions
that subsample the encoder output in time before the CTC head.

Each layer: ``residual = GLU(residual_conv(LN(x)))``; ``h = GLU(self_attn_conv(LN(x)))`` (both kernel
``kernel_size``, stride ``stride``, padding ``stride // 2``); ``h = residual + dropout(attention(h))`` (plain
multi-head attention over the subsampled frames); ``h = h + FFN(h)`` (relu). An optional Linear + LayerNorm first
changes the width (HF ``output_hidden_size``). Keys are HF's, but for the FFN (``ffn.{layer_norm,w_1,w_2}``, the
conformer's names). As HF, padded encoder frames are not zeroed before the convolutions, and the subsampled lengths
follow HF's formula ``floor((n + 2 * (kernel_size // 2) - kernel_size) / stride) + 1``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.modules.conformer_layer import FeedForwardModule
from fairseq_lite.modules.espnet_multihead_attention import ESPNETMultiHeadedAttention


class W2vBertAdapterLayer(nn.Module):
    """One subsampling adapter layer (HF ``Wav2Vec2BertAdapterLayer``); ``dropout`` on the attention output is HF's
    ``conformer_conv_dropout``, ``hidden_dropout`` / ``activation_dropout`` those of the FFN."""

    def __init__(self, embed_dim: int, ffn_dim: int, heads: int, kernel_size: int, stride: int, *,
                 dropout: float = 0.0, attention_dropout: float = 0.0, hidden_dropout: float = 0.0,
                 activation_dropout: float = 0.0):
        super().__init__()
        self.residual_layer_norm = nn.LayerNorm(embed_dim)
        self.residual_conv = nn.Conv1d(embed_dim, 2 * embed_dim, kernel_size, stride=stride, padding=stride // 2)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn_conv = nn.Conv1d(embed_dim, 2 * embed_dim, kernel_size, stride=stride, padding=stride // 2)
        self.self_attn = ESPNETMultiHeadedAttention(embed_dim, heads, attention_dropout)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.ffn = FeedForwardModule(embed_dim, ffn_dim, hidden_dropout, activation_dropout, activation=F.relu)

    @staticmethod
    def _subsample(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return F.glu(conv(x.transpose(1, 2)), dim=1).transpose(1, 2)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``x`` B x T x C → B x T' x C; ``padding_mask``: B x T' (True at padding) of the output, or None."""
        residual = self._subsample(self.residual_conv, self.residual_layer_norm(x))
        h = self._subsample(self.self_attn_conv, self.self_attn_layer_norm(x))
        h = residual + self.self_attn_dropout(self.self_attn(h, padding_mask))
        return h + self.ffn(h)


class W2vBertAdapter(nn.Module):
    """``num_layers`` adapter layers (HF ``Wav2Vec2BertAdapter``), after ``proj`` + ``proj_layer_norm`` when
    ``output_dim`` differs from ``embed_dim``; each layer is skipped with probability ``layerdrop`` in training."""

    def __init__(self, embed_dim: int, output_dim: int, ffn_dim: int, heads: int, num_layers: int = 1,
                 kernel_size: int = 3, stride: int = 2, layerdrop: float = 0.0, **dropouts: float):
        super().__init__()
        self.proj = nn.Linear(embed_dim, output_dim) if output_dim != embed_dim else None
        self.proj_layer_norm = nn.LayerNorm(output_dim) if output_dim != embed_dim else None
        self.layers = nn.ModuleList(W2vBertAdapterLayer(output_dim, ffn_dim, heads, kernel_size, stride, **dropouts)
                                    for _ in range(num_layers))
        self.kernel_size = kernel_size
        self.stride = stride
        self.layerdrop = layerdrop

    def subsampled_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """One layer's output lengths for ``lengths`` input frames (HF's formula)."""
        return torch.div(lengths + 2 * (self.kernel_size // 2) - self.kernel_size, self.stride,
                         rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B x T' x C' subsampled output, its B x T' padding mask or None)."""
        if self.proj is not None:
            x = self.proj_layer_norm(self.proj(x))
        lengths = None if padding_mask is None else (~padding_mask).sum(1)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand([]).item() <= self.layerdrop:
                continue  # HF still shortens the lengths of a dropped layer; here they stay those of x
            frames = (x.size(1) + 2 * (self.stride // 2) - self.kernel_size) // self.stride + 1
            if lengths is not None:
                lengths = self.subsampled_lengths(lengths)
                padding_mask = torch.arange(frames, device=x.device) >= lengths[:, None]
            x = layer(x, padding_mask)
        return x, padding_mask
