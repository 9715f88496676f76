"""Self-attention over ``torch.nn.functional.scaled_dot_product_attention`` with fairseq's parameters.

Keeps fairseq's separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers (state-dict keys
``self_attn.{q,k,v,out}_proj.{weight,bias}``) and reads legacy ``in_proj_weight``/``in_proj_bias`` by
splitting them. In training q, k and v come from one matmul against the concatenated weights (one large
GEMM runs closer to the CPU's peak than three thin ones); gradients flow back to the separate parameters.
Inputs are B×T×C; ``key_padding_mask`` is B×T with True marking padding.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask_from_padding(key_padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The boolean SDPA mask (B×1×1×T, True = attend) for a B×T padding mask, or None without padding."""
    if key_padding_mask is None:
        return None
    return ~key_padding_mask[:, None, None, :]


def projection_heads(x: torch.Tensor, projections: Sequence[nn.Linear], num_heads: int) -> Tuple[torch.Tensor, ...]:
    """Apply several same-shaped Linear layers to ``x`` (B×T×C) and split each result into heads: a tuple of
    B×H×T×D tensors, one per layer (the q/k/v projection of self-attention).

    When gradients are recorded the layers run as one matmul against their concatenated weights, and the
    backward pass then needs one matmul per gradient instead of one per layer; without gradients the weight
    copy costs about what the fused matmul saves, so each layer runs on its own."""
    bsz, seq_len, _ = x.shape
    if len(projections) == 1 or not torch.is_grad_enabled():
        return tuple(p(x).view(bsz, seq_len, num_heads, -1).transpose(1, 2) for p in projections)
    weight = torch.cat([p.weight for p in projections])
    bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
    out = F.linear(x, weight, bias).view(bsz, seq_len, len(projections), num_heads, -1)
    return out.permute(2, 0, 3, 1, 4).unbind(0)


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
        q, k, v = projection_heads(x, (self.q_proj, self.k_proj, self.v_proj), self.num_heads)
        return self.attend(q, k, v, attn_mask)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Split a legacy packed ``in_proj_weight``/``in_proj_bias`` into q/k/v (fairseq's upgrade)."""
        for suffix in ("weight", "bias"):
            packed = state_dict.pop(f"{prefix}in_proj_{suffix}", None)
            if packed is not None:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3, dim=0)):
                    state_dict[f"{prefix}{name}.{suffix}"] = part
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
