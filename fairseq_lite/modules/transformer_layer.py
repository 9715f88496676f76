"""One wav2vec 2.0 encoder block (fairseq's ``TransformerSentenceEncoderLayer``), post-LN or pre-LN, optionally with
MMS language adapters (fairseq HEAD's ``TransformerSentenceEncoderWithAdapterLayer``)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from fairseq_lite.modules.activations import get_activation_fn
from fairseq_lite.modules.multihead_attention import MultiheadAttention


class TransformerSentenceEncoderLayer(nn.Module):
    """Self-attention + feed-forward with residuals; keys ``self_attn``, ``self_attn_layer_norm``, ``fc1``,
    ``fc2``, ``final_layer_norm`` (and ``adapter_layer`` with an ``adapter``).

    post-LN (``layer_norm_first=False``, Base): x = LN1(x + attn(x)); x = LN2(x + ffn(x)).
    pre-LN (``layer_norm_first=True``, Large): x = x + attn(LN1(x)); x = x + ffn(LN2(x)).
    With an ``adapter`` (an ``AdapterFast``, ``layer_type=trf_adp``): x = x + adapter(x, adapter_id) after either.
    """

    def __init__(self, embedding_dim: int = 768, ffn_embedding_dim: int = 3072, num_attention_heads: int = 8,
                 dropout: float = 0.1, attention_dropout: float = 0.1, activation_dropout: float = 0.1,
                 activation_fn: str = "relu", layer_norm_first: bool = False, adapter: Optional[nn.Module] = None):
        super().__init__()
        self.activation_fn = get_activation_fn(activation_fn)
        self.self_attn = MultiheadAttention(embedding_dim, num_attention_heads, dropout=attention_dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(activation_dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(embedding_dim)
        self.fc1 = nn.Linear(embedding_dim, ffn_embedding_dim)
        self.fc2 = nn.Linear(ffn_embedding_dim, embedding_dim)
        self.final_layer_norm = nn.LayerNorm(embedding_dim)
        self.adapter_layer = adapter

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """fc2(drop(act(fc1(x)))), before the last dropout (fairseq's ``layer_result``)."""
        return self.fc2(self.dropout2(self.activation_fn(self.fc1(x))))

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, adapter_id: Optional[int] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` B×T×C → (x, ffn output before the residual), as fairseq's ``(x, (attn, layer_result))``.

        ``attn_mask`` is the prepared boolean SDPA mask (the encoder builds it once for all layers); ``adapter_id``
        the batch's adapter (checked by the encoder; layers without an adapter ignore it)."""
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), padding_mask, attn_mask))
            ffn_out = self.feed_forward(self.final_layer_norm(x))
            x = x + self.dropout3(ffn_out)
        else:
            x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, padding_mask, attn_mask)))
            ffn_out = self.feed_forward(x)
            x = self.final_layer_norm(x + self.dropout3(ffn_out))
        if self.adapter_layer is not None:
            x = x + self.adapter_layer(x, adapter_id)
        return x, ffn_out
