"""Self-attention with Shaw et al.'s clipped relative key positions (w2v-BERT 2.0's ``conformer_shaw``; HF
``Wav2Vec2BertSelfAttention`` with ``position_embeddings_type="relative_key"``).

score(i, j) = (q_i . k_j + q_i . E[clip(j - i, -left, right) + left]) / sqrt(d_k), with ``E`` the learned
``distance_embedding`` ((left + right + 1) x d_k, shared by the heads). Keys are HF's (``linear_q/k/v/out``,
``distance_embedding``), which are also fairseq's ESPnet attention names.
"""

from __future__ import annotations

import math

import torch

from torch import nn

from fairseq_lite.modules.espnet_multihead_attention import ESPNETMultiHeadedAttention
from fairseq_lite.modules.multihead_attention import attention_mask_from_padding, projection_heads


class ShawRelativeKeyMultiHeadedAttention(ESPNETMultiHeadedAttention):
    """ESPnet-style attention plus the relative-key bias, distances clipped to [-``left``, +``right``]."""

    def __init__(self, n_feat: int, n_head: int, dropout: float, left: int = 64, right: int = 8):
        super().__init__(n_feat, n_head, dropout)
        self.left = left
        self.right = right
        self.distance_embedding = nn.Embedding(left + right + 1, self.d_k)

    def relative_bias(self, q: torch.Tensor) -> torch.Tensor:
        """B x H x T x T position scores q_i . E[d(i, j)] / sqrt(d_k): each query against the (left+right+1)
        embeddings, then gathered by clipped distance (the same sums as HF's T x T x d_k table, less memory)."""
        length = q.size(2)
        positions = torch.arange(length, device=q.device)
        distance = (positions[None, :] - positions[:, None]).clamp(-self.left, self.right) + self.left
        scores = torch.matmul(q, self.distance_embedding.weight.to(q.dtype).t())  # B x H x T x (L+R+1)
        index = distance.expand(*scores.shape[:2], length, length)
        return scores.gather(-1, index) * (1.0 / math.sqrt(self.d_k))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, pos_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x`` (B x T x C); ``key_padding_mask`` B x T, True at padding."""
        if attn_mask is None:
            attn_mask = attention_mask_from_padding(key_padding_mask)
        q, k, v = projection_heads(x, (self.linear_q, self.linear_k, self.linear_v), self.h)
        bias = self.relative_bias(q)
        if attn_mask is not None:
            bias = bias.masked_fill(~attn_mask, float("-inf"))
        return self._attend(q, k, v, bias)
