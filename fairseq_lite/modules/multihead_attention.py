"""Self-attention over ``torch.nn.functional.scaled_dot_product_attention`` with fairseq's parameters.

Keeps fairseq's separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers (state-dict keys
``self_attn.{q,k,v,out}_proj.{weight,bias}``) and reads legacy ``in_proj_weight``/``in_proj_bias`` by
splitting them. Inputs are B×T×C; ``key_padding_mask`` is B×T with True marking padding.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask_from_padding(key_padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The boolean SDPA mask (B×1×1×T, True = attend) for a B×T padding mask, or None without padding."""
    if key_padding_mask is None:
        return None
    return ~key_padding_mask[:, None, None, :]


class MultiheadAttention(nn.Module):
    """Multi-head self-attention (fairseq's ``MultiheadAttention`` for the encoder case)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # fairseq's initialisation (the encoder's init_bert_params later overrides q/k/v)
        gain = 2**-0.5
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """B×T×C → B×H×T×D."""
        bsz, seq_len, _ = x.shape
        return x.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """SDPA over B×H×T×D heads, then merge heads and apply ``out_proj`` → B×T×C."""
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        bsz, _, seq_len, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(bsz, seq_len, self.embed_dim))

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` B×T×C; ``attn_mask`` (boolean, True = attend) overrides the one built from the padding."""
        if attn_mask is None:
            attn_mask = attention_mask_from_padding(key_padding_mask)
        q = self.split_heads(self.q_proj(x))
        k = self.split_heads(self.k_proj(x))
        v = self.split_heads(self.v_proj(x))
        return self.attend(q, k, v, attn_mask)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Split a legacy packed ``in_proj_weight``/``in_proj_bias`` into q/k/v (fairseq's upgrade)."""
        for suffix in ("weight", "bias"):
            packed = state_dict.pop(f"{prefix}in_proj_{suffix}", None)
            if packed is not None:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3, dim=0)):
                    state_dict[f"{prefix}{name}.{suffix}"] = part
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
