"""Conformer block of wav2vec 2.0 conformer models (fairseq's ``ConformerWav2Vec2EncoderLayer``).

State-dict names follow fairseq's ``conformer_layer.py``: ``ffn1.{layer_norm,w_1,w_2}``,
``self_attn_layer_norm``, ``self_attn.*``, ``conv_module.{layer_norm,pointwise_conv1,depthwise_conv,
batch_norm,pointwise_conv2}``, ``ffn2.*``, ``final_layer_norm``. Tensors are B x T x C.
"""

from __future__ import annotations

from typing import Callable

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
    """LayerNorm -> Linear ``w_1`` -> swish -> dropout -> Linear ``w_2`` -> dropout (fairseq's ``FeedForwardModule``).

    ``activation_dropout``: the dropout after the activation when it differs from ``dropout`` (HF w2v-BERT's
    ``activation_dropout``; fairseq uses ``dropout`` for both); ``activation``: another activation function (HF
    w2v-BERT's adapter uses relu).
    """

    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float, activation_dropout: float | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] = F.silu):
        super().__init__()
        self.activation = activation
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.w_1 = nn.Linear(embed_dim, ffn_dim)
        self.w_2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout1 = nn.Dropout(dropout if activation_dropout is None else activation_dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.w_2(self.dropout1(self.activation(self.w_1(self.layer_norm(x))))))


class ConvolutionModule(nn.Module):
    """Conformer convolution module (fairseq's ``ConvolutionModule``): LayerNorm -> pointwise conv (E -> 2E) ->
    GLU -> depthwise conv (``depthwise_conv_kernel_size``, same padding) -> BatchNorm -> swish -> pointwise conv
    -> dropout. No conv biases, as in fairseq.

    Like fairseq (and HF's wav2vec2-conformer), padded frames are not zeroed before the depthwise convolution, so
    they reach the last valid frames and the BatchNorm statistics; released conformer checkpoints were trained
    that way.

    Options for w2v-BERT 2.0's block (HF ``Wav2Vec2BertConvolutionModule``): ``causal`` pads the depthwise
    convolution on the left only (``kernel - 1`` frames), ``norm="layer_norm"`` replaces the BatchNorm by a
    LayerNorm named ``depthwise_layer_norm``, ``zero_padding`` zeroes padded frames after the first LayerNorm.
    """

    def __init__(self, embed_dim: int, depthwise_kernel_size: int, dropout: float, causal: bool = False,
                 norm: str = "batch_norm", zero_padding: bool = False):
        super().__init__()
        if depthwise_kernel_size % 2 == 0:
            raise ConfigError(
                f"depthwise_conv_kernel_size={depthwise_kernel_size} must be odd (same padding); e.g. use 31"
            )
        if norm not in ("batch_norm", "layer_norm"):
            raise ConfigError(f"conformer convolution norm {norm!r} is unknown: choose batch_norm or layer_norm")
        self.causal = causal
        self.zero_padding = zero_padding
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.pointwise_conv1 = nn.Conv1d(embed_dim, 2 * embed_dim, kernel_size=1, bias=False)
        self.depthwise_conv = nn.Conv1d(
            embed_dim,
            embed_dim,
            depthwise_kernel_size,
            padding=0 if causal else (depthwise_kernel_size - 1) // 2,
            groups=embed_dim,
            bias=False,
        )
        if norm == "batch_norm":
            self.batch_norm = nn.BatchNorm1d(embed_dim)
        else:
            self.depthwise_layer_norm = nn.LayerNorm(embed_dim)
        self.pointwise_conv2 = nn.Conv1d(embed_dim, embed_dim, kernel_size=1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def depthwise_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm after the depthwise convolution, on B x C x T."""
        if hasattr(self, "batch_norm"):
            return self.batch_norm(x)
        return self.depthwise_layer_norm(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` B x T x C; ``padding_mask`` B x T (True at padding) is used only with ``zero_padding``."""
        x = self.layer_norm(x)
        if self.zero_padding and padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # B x C x T
        if self.causal:
            x = F.pad(x, (self.depthwise_conv.kernel_size[0] - 1, 0))
        x = F.silu(self.depthwise_norm(self.depthwise_conv(x)))
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

    Keyword options for w2v-BERT 2.0 (HF ``Wav2Vec2BertEncoderLayer``), each None/False = fairseq's behaviour:
    ``self_attn`` a prebuilt attention module (e.g. ``ShawRelativeKeyMultiHeadedAttention``) used instead of the
    one ``attn_type``/``pos_enc_type`` name; ``activation_dropout`` inside the FFNs; ``self_attn_dropout`` on the
    attention output (HF uses its ``attention_dropout`` there); ``conv_dropout``; ``conv_causal``, ``conv_norm``
    and ``conv_zero_padding`` as in ``ConvolutionModule``.
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
        *,
        self_attn: nn.Module | None = None,
        activation_dropout: float | None = None,
        self_attn_dropout: float | None = None,
        conv_dropout: float | None = None,
        conv_causal: bool = False,
        conv_norm: str = "batch_norm",
        conv_zero_padding: bool = False,
    ):
        super().__init__()
        self.pos_enc_type = pos_enc_type
        self.ffn1 = FeedForwardModule(embed_dim, ffn_embed_dim, dropout, activation_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.self_attn_dropout = nn.Dropout(dropout if self_attn_dropout is None else self_attn_dropout)
        self.self_attn = self_attn if self_attn is not None else build_conformer_attention(
            embed_dim, attention_heads, dropout, attn_type, pos_enc_type)
        self.conv_module = ConvolutionModule(
            embed_dim, depthwise_conv_kernel_size, dropout if conv_dropout is None else conv_dropout,
            causal=conv_causal, norm=conv_norm, zero_padding=conv_zero_padding)
        self.ffn2 = FeedForwardModule(embed_dim, ffn_embed_dim, dropout, activation_dropout)
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
        x = x + self.conv_module(x, padding_mask)
        ffn_output = self.ffn2(x)
        x = self.final_layer_norm(x + 0.5 * ffn_output)
        return x, ffn_output
