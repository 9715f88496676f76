"""ESPnet-style self-attention of the conformer (fairseq's ``attn_type=espnet``): plain, rel_pos and rope.

Parameter names follow fairseq's ``espnet_multihead_attention.py`` (``linear_q/k/v/out``; ``linear_pos``,
``pos_bias_u/v`` for rel_pos; ``rotary_emb.inv_freq`` for rope). All three compute attention through
``torch.nn.functional.scaled_dot_product_attention``, and in training projections of the same input run as
one matmul (the weights stay separate). Inputs and outputs are B x T x C, and ``forward`` takes the same
``(x, key_padding_mask, attn_mask)`` as ``MultiheadAttention`` (``attn_mask``: the boolean SDPA mask,
True = attend, that the encoder prepares once for all layers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.modules.multihead_attention import attention_mask_from_padding, projection_heads
from fairseq_lite.modules.rotary_positional_embedding import RotaryPositionalEmbedding, apply_rotary


class ESPNETMultiHeadedAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (fairseq's ``ESPNETMultiHeadedAttention``)."""

    def __init__(self, n_feat: int, n_head: int, dropout: float):
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"embedding dim {n_feat} is not divisible by the number of heads {n_head}")
        self.d_k = n_feat // n_head
        self.h = n_head
        self.dropout = dropout
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_k) + attn_mask) v, heads merged, then ``linear_out``."""
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, length, _ = out.shape
        return self.linear_out(out.transpose(1, 2).reshape(batch, length, self.h * self.d_k))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x`` (B x T x C); ``key_padding_mask`` B x T, True at padding."""
        if attn_mask is None:
            attn_mask = attention_mask_from_padding(key_padding_mask)
        q, k, v = projection_heads(x, (self.linear_q, self.linear_k, self.linear_v), self.h)
        return self._attend(q, k, v, attn_mask)


class RelPositionMultiHeadedAttention(ESPNETMultiHeadedAttention):
    """Transformer-XL style attention with relative positions (fairseq's ``RelPositionMultiHeadedAttention``).

    score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_pos p(i - j)] / sqrt(d_k), with ``pos_emb`` from
    ``RelPositionalEncoding``. The position term goes to SDPA as an additive ``attn_mask``.
    """

    def __init__(self, n_feat: int, n_head: int, dropout: float):
        super().__init__(n_feat, n_head, dropout)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    @staticmethod
    def rel_shift(scores: torch.Tensor) -> torch.Tensor:
        """B x H x T x (2T-1) scores against positions T-1 .. -(T-1) -> B x H x T x T scores for i - j.

        Row i needs column T-1-i+j: after padding each row to 2T columns and flattening, that element sits at
        (T-1) + i*(2T-1) + j, so a view with row stride 2T-1 starting at T-1 lines the rows up.
        """
        *lead, length, width = scores.shape
        flat = F.pad(scores, (0, 1)).flatten(-2)
        shifted = flat[..., length - 1 : length - 1 + length * width].view(*lead, length, width)
        return shifted[..., :length]

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        """``pos_emb``: the (2T-1) x C table of ``RelPositionalEncoding`` for this length."""
        if pos_emb is None:
            raise ValueError("rel_pos attention needs pos_emb from RelPositionalEncoding")
        if attn_mask is None:
            attn_mask = attention_mask_from_padding(key_padding_mask)
        q, k, v = projection_heads(x, (self.linear_q, self.linear_k, self.linear_v), self.h)
        p = self.linear_pos(pos_emb).view(-1, self.h, self.d_k).transpose(0, 1)  # H x (2T-1) x d_k
        position_scores = torch.matmul(q + self.pos_bias_v[:, None, :], p.transpose(-2, -1))
        bias = self.rel_shift(position_scores) * (1.0 / math.sqrt(self.d_k))
        if attn_mask is not None:
            bias = bias.masked_fill(~attn_mask, float("-inf"))
        return self._attend(q + self.pos_bias_u[:, None, :], k, v, bias)


class RotaryPositionMultiHeadedAttention(ESPNETMultiHeadedAttention):
    """Attention with rotary positions (fairseq's ``RotaryPositionMultiHeadedAttention``).

    As in fairseq, the rotation is applied per head to the *inputs* of ``linear_q`` and ``linear_k``
    (not to the projected queries/keys); values are not rotated.
    """

    def __init__(self, n_feat: int, n_head: int, dropout: float, rotary_emb_base: int = 10000):
        super().__init__(n_feat, n_head, dropout)
        self.rotary_emb = RotaryPositionalEmbedding(self.d_k, base=rotary_emb_base)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is None:
            attn_mask = attention_mask_from_padding(key_padding_mask)
        batch, length, channels = x.shape
        cos, sin = self.rotary_emb(length, x.dtype, x.device)
        rotated = apply_rotary(x.view(batch, length, self.h, self.d_k), cos[:, None, :], sin[:, None, :])
        rotated = rotated.view(batch, length, channels)
        q, k = projection_heads(rotated, (self.linear_q, self.linear_k), self.h)
        (v,) = projection_heads(x, (self.linear_v,), self.h)
        return self._attend(q, k, v, attn_mask)
