"""Conformer block of wav2vec 2.0 conformer models (fairseq's ``ConformerWav2Vec2EncoderLayer``).

State-dict names follow fairseq's ``conformer_layer.py``: ``ffn1.{layer_norm,w_1,w_2}``,
``self_attn_layer_norm``, ``self_attn.*``, ``conv_module.{layer_norm,pointwise_conv1,depthwise_conv,
batch_norm,pointwise_conv2}``, ``ffn2.*``, ``final_layer_norm``. Tensors are B x T x C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.errors import ConfigError
from fairseq_lite.modules.espnet_multihead_attention import (
    ESPNETMultiHeadedAttention,
    RelPositionMultiHeadedAttention,
    RotaryPositionMultiHeadedAttention,
)
from fairseq_lite.modules.multihead_attention import MultiheadAttention


class FeedForwardModule(nn.Module):
    """LayerNorm -> Linear ``w_1`` -> swish -> dropout -> Linear ``w_2`` -> dropout (fairseq's ``FeedForwardModule``)."""

    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.w_1 = nn.Linear(embed_dim, ffn_dim)
        self.w_2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.w_2(self.dropout1(F.silu(self.w_1(self.layer_norm(x))))))


class ConvolutionModule(nn.Module):
    """Conformer convolution module (fairseq's ``ConvolutionModule``): LayerNorm -> pointwise conv (E -> 2E) ->
    GLU -> depthwise conv (``depthwise_conv_kernel_size``, same padding) -> BatchNorm -> swish -> pointwise conv
    -> dropout. No conv biases, as in fairseq.

    Like fairseq (and HF), padded frames are not zeroed before the depthwise convolution, so they reach the
    last valid frames and the BatchNorm statistics; released conformer checkpoints were trained that way.
    """

    def __init__(self, embed_dim: int, depthwise_kernel_size: int, dropout: float):
        super().__init__()
        if depthwise_kernel_size % 2 == 0:
            raise ConfigError(
                f"depthwise_conv_kernel_size={depthwise_kernel_size} must be odd (same padding); e.g. use 31"
            )
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.pointwise_conv1 = nn.Conv1d(embed_dim, 2 * embed_dim, kernel_size=1, bias=False)
        self.depthwise_conv = nn.Conv1d(
            embed_dim,
            embed_dim,
            depthwise_kernel_size,
            padding=(depthwise_kernel_size - 1) // 2,
            groups=embed_dim,
            bias=False,
        )
        self.batch_norm = nn.BatchNorm1d(embed_dim)
        self.pointwise_conv2 = nn.Conv1d(embed_dim, embed_dim, kernel_size=1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x).transpose(1, 2)  # B x C x T
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = F.silu(self.batch_norm(self.depthwise_conv(x)))
        return self.dropout(self.pointwise_conv2(x)).transpose(1, 2)


def build_conformer_attention(embed_dim: int, heads: int, dropout: float, attn_type: str, pos_enc_type: str) -> nn.Module:
    """The self-attention fairseq's conformer layer builds for ``attn_type`` / ``pos_enc_type``."""
    if attn_type != "espnet":
        if pos_enc_type != "abs":
            raise ConfigError(
                f"pos_enc_type={pos_enc_type} needs model.attn_type=espnet (got attn_type='{attn_type}')"
            )
        return MultiheadAttention(embed_dim, heads, dropout=dropout)
    if pos_enc_type == "rel_pos":
        return RelPositionMultiHeadedAttention(embed_dim, heads, dropout)
    if pos_enc_type == "rope":
        return RotaryPositionMultiHeadedAttention(embed_dim, heads, dropout)
    if pos_enc_type == "abs":
        return ESPNETMultiHeadedAttention(embed_dim, heads, dropout)
    raise ConfigError(f"unknown pos_enc_type '{pos_enc_type}': choose abs, rel_pos or rope")


class ConformerWav2Vec2EncoderLayer(nn.Module):
    """Macaron conformer block: x += FFN1(x)/2; x += MHA(LN(x)); x += Conv(x); x += FFN2(x)/2; LN.

    ``dropout`` is used everywhere (FFNs, attention probabilities, convolution module), as in fairseq, which
    builds the layer from ``cfg.dropout`` and always uses swish.
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_embed_dim: int,
        attention_heads: int,
        dropout: float,
        depthwise_conv_kernel_size: int = 31,
        attn_type: str = "espnet",
        pos_enc_type: str = "abs",
    ):
        super().__init__()
        self.pos_enc_type = pos_enc_type
        self.ffn1 = FeedForwardModule(embed_dim, ffn_embed_dim, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn_dropout = nn.Dropout(dropout)
        self.self_attn = build_conformer_attention(embed_dim, attention_heads, dropout, attn_type, pos_enc_type)
        self.conv_module = ConvolutionModule(embed_dim, depthwise_conv_kernel_size, dropout)
        self.ffn2 = FeedForwardModule(embed_dim, ffn_embed_dim, dropout)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        position_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: B x T x C; ``padding_mask``: B x T, True at padding; ``attn_mask``: the prepared boolean SDPA
        mask (optional); ``position_emb``: the rel_pos table.

        Returns ``(x, ffn_output)`` like ``TransformerSentenceEncoderLayer`` — fairseq's ``layer_result``,
        the FFN2 output before the half-step residual.
        """
        x = x + 0.5 * self.ffn1(x)
        h = self.self_attn_layer_norm(x)
        if self.pos_enc_type == "rel_pos":
            attn = self.self_attn(h, padding_mask, attn_mask, pos_emb=position_emb)
        else:
            attn = self.self_attn(h, padding_mask, attn_mask)
        x = x + self.self_attn_dropout(attn)
        x = x + self.conv_module(x)
        ffn_output = self.ffn2(x)
        x = self.final_layer_norm(x + 0.5 * ffn_output)
        return x, ffn_output
