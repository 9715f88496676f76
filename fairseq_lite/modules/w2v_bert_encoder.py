"""The w2v-BERT 2.0 context network (HF ``Wav2Vec2BertEncoder``; Seamless's ``conformer_shaw``).

A ``TransformerEncoder`` without ``pos_conv`` and without a final LayerNorm whose layers are
``ConformerWav2Vec2EncoderLayer`` with Shaw relative-key attention (``ShawRelativeKeyMultiHeadedAttention``),
a causal depthwise convolution normalised by a LayerNorm, padded frames zeroed before it, and HF's dropouts.
Padded input frames are zeroed and ``dropout`` is applied to the input, as HF does; layerdrop, activation
checkpointing and ``layer_results`` come from ``TransformerEncoder``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from fairseq_lite.modules.conformer_layer import ConformerWav2Vec2EncoderLayer
from fairseq_lite.modules.shaw_attention import ShawRelativeKeyMultiHeadedAttention
from fairseq_lite.modules.transformer_encoder import LayerResult, TransformerEncoder


class W2vBertEncoder(TransformerEncoder):
    """``TransformerEncoder``'s arguments (``conv_pos*``, ``layer_norm_first`` and ``activation_fn`` unused: no
    positional convolution, swish) plus

    Args:
        depthwise_conv_kernel_size: kernel of each causal depthwise convolution (HF ``conv_depthwise_kernel_size``).
        conv_dropout: dropout after each convolution module (HF ``conformer_conv_dropout``).
        left_max_position_embeddings / right_max_position_embeddings: the relative-position clip (HF's names).
    """

    def __init__(self, embed_dim: int, num_layers: int, ffn_dim: int, num_heads: int, *,
                 depthwise_conv_kernel_size: int = 31, conv_dropout: float = 0.1,
                 left_max_position_embeddings: int = 64, right_max_position_embeddings: int = 8,
                 **transformer_args: Any):
        self.w2v_bert_args = dict(kernel=depthwise_conv_kernel_size, conv_dropout=conv_dropout,
                                  left=left_max_position_embeddings, right=right_max_position_embeddings)
        super().__init__(embed_dim, num_layers, ffn_dim, num_heads, layer_norm_first=True, **transformer_args)
        self.layer_norm = None  # HF's encoder has no final LayerNorm

    def build_pos_conv(self, conv_pos: int, conv_pos_groups: int, depth: int) -> None:
        """No positional convolution: positions act inside attention."""
        return None

    def build_encoder_layer(self, ffn_dim: int, num_heads: int, attention_dropout: float, activation_dropout: float,
                            activation_fn: str, layer_norm_first: bool, adapter: Optional[nn.Module] = None
                            ) -> nn.Module:
        """A w2v-BERT conformer block with HF's dropouts: ``dropout`` (HF ``hidden_dropout``) after each FFN,
        ``activation_dropout`` inside them, ``attention_dropout`` on the attention weights and its output."""
        args = self.w2v_bert_args
        attention = ShawRelativeKeyMultiHeadedAttention(self.embedding_dim, num_heads, attention_dropout,
                                                        left=args["left"], right=args["right"])
        return ConformerWav2Vec2EncoderLayer(
            embed_dim=self.embedding_dim, ffn_embed_dim=ffn_dim, attention_heads=num_heads, dropout=self.dropout,
            depthwise_conv_kernel_size=args["kernel"], self_attn=attention, activation_dropout=activation_dropout,
            self_attn_dropout=attention_dropout, conv_dropout=args["conv_dropout"], conv_causal=True,
            conv_norm="layer_norm", conv_zero_padding=True,
        )

    def embed_positions(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                layer: Optional[int] = None, corpus_key: Any = None) -> Tuple[torch.Tensor, List[LayerResult]]:
        """(output of the last layer, or of layer ``layer`` (0-based); [(x, None, ffn_out)] per layer run)."""
        return self.extract_features(x, padding_mask, tgt_layer=layer)
