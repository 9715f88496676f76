"""The wav2vec 2.0 conformer context network (``layer_type=conformer``; fairseq's ``ConformerEncoder``).

A ``TransformerEncoder`` whose layers are ``ConformerWav2Vec2EncoderLayer``. Positions by ``pos_enc_type``:

- ``abs``: the inherited ``pos_conv`` is added to the input, exactly as fairseq's TransformerEncoder does
  with conformer layers (including its padding of time to ``required_seq_len_multiple``);
- ``rel_pos``: sinusoidal relative encodings (``RelPositionalEncoding``) go to every layer's attention;
- ``rope``: rotary embeddings inside every layer's attention.

For ``rel_pos``/``rope`` fairseq still builds ``pos_conv`` (its weights are in the state dict) but never
applies it, and does not pad time; both are kept here so checkpoints load and outputs match. fairseq HEAD
cannot build or run these two variants (issues #5174, #5386); here all three work.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from fairseq_lite.errors import ConfigError
from fairseq_lite.modules.conformer_layer import ConformerWav2Vec2EncoderLayer
from fairseq_lite.modules.positional_encoding import RelPositionalEncoding
from fairseq_lite.modules.transformer_encoder import TransformerEncoder

POS_ENC_TYPES = ("abs", "rel_pos", "rope")


class ConformerEncoder(TransformerEncoder):
    """Conformer encoder: ``TransformerEncoder``'s arguments plus

    Args:
        depthwise_conv_kernel_size: kernel of each block's depthwise convolution (``depthwise_conv_kernel_size``).
        attn_type: ``"espnet"`` for ESPnet attention, else plain attention (``attn_type``).
        pos_enc_type: ``abs``, ``rel_pos`` or ``rope`` (``pos_enc_type``).
        max_positions: length of the ``rel_pos`` table (``max_positions``).

    fairseq builds every dropout of a conformer block from ``dropout`` and always uses swish, so the
    ``attention_dropout``, ``activation_dropout`` and ``activation_fn`` arguments do not reach the layers.
    """

    def __init__(self, embed_dim: int, num_layers: int, ffn_dim: int, num_heads: int, *,
                 depthwise_conv_kernel_size: int = 31, attn_type: str = "", pos_enc_type: str = "abs",
                 max_positions: int = 100000, **transformer_args: Any):
        if pos_enc_type not in POS_ENC_TYPES:
            raise ConfigError(
                f"model.pos_enc_type={pos_enc_type!r} is not supported: choose one of {', '.join(POS_ENC_TYPES)}"
            )
        self.conformer_args = dict(depthwise_conv_kernel_size=depthwise_conv_kernel_size, attn_type=attn_type,
                                   pos_enc_type=pos_enc_type)
        super().__init__(embed_dim, num_layers, ffn_dim, num_heads, **transformer_args)
        self.pos_enc_type = pos_enc_type
        self.rel_pos_encoding = (
            RelPositionalEncoding(max_positions, self.embedding_dim) if self.pos_enc_type == "rel_pos" else None
        )
        if self.pos_enc_type != "abs":
            self.required_seq_len_multiple = 1  # fairseq's ConformerEncoder does not pad time

    def build_encoder_layer(self, ffn_dim: int, num_heads: int, attention_dropout: float, activation_dropout: float,
                            activation_fn: str, layer_norm_first: bool, adapter: Optional[nn.Module] = None
                            ) -> nn.Module:
        """A conformer block (fairseq: ``dropout`` for every dropout in it, always swish); fairseq's adapters exist
        on transformer layers only (``layer_type=trf_adp``)."""
        if adapter is not None:
            raise ConfigError("language adapters (model.adp_*) need model.layer_type=trf_adp, not conformer")
        return ConformerWav2Vec2EncoderLayer(
            embed_dim=self.embedding_dim, ffn_embed_dim=ffn_dim, attention_heads=num_heads, dropout=self.dropout,
            **self.conformer_args,
        )

    def embed_positions(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``abs`` adds ``pos_conv``; ``rel_pos``/``rope`` leave the input as it is (positions act in attention)."""
        if self.pos_enc_type == "abs":
            return super().embed_positions(x, padding_mask)
        return x

    def layer_kwargs(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> Dict[str, Any]:
        kwargs = super().layer_kwargs(x, padding_mask)
        if self.rel_pos_encoding is not None:
            kwargs["position_emb"] = self.rel_pos_encoding(x)
        return kwargs
