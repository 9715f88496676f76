"""The wav2vec 2.0 context network (fairseq's ``TransformerEncoder`` in ``models/wav2vec/wav2vec2.py``).

Keys: ``pos_conv.0.{weight_g,weight_v,bias}`` (legacy weight-norm names; the newer
``parametrizations.weight.original0/1`` spelling is accepted on load), ``layers.{n}.*``, ``layer_norm.*``.
Tensors are B×T×C throughout; ``padding_mask`` is B×T with True marking padded frames.

Built from plain arguments; ``encoder_arguments(cfg)`` in ``models/wav2vec/wav2vec2.py`` maps a model config
onto them. Subclasses (the conformer encoder) reuse the construction and the layer loop by overriding
``build_encoder_layer``, ``embed_positions`` and ``layer_kwargs``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fairseq_lite.modules.adapter import adapter_for_layer, adapter_index
from fairseq_lite.modules.multihead_attention import attention_mask_from_padding
from fairseq_lite.modules.same_pad import SamePad
from fairseq_lite.modules.static_shapes import any_padding, is_xla_tensor
from fairseq_lite.modules.transformer_layer import TransformerSentenceEncoderLayer
from fairseq_lite.modules.transpose_last import TransposeLast

LayerResult = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]


def init_bert_params(module: nn.Module) -> None:
    """fairseq's ``init_bert_params``: Linear/Embedding weights ~ N(0, 0.02), biases 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``weight_v · weight_g / ||weight_v||``, the norm taken over every
    axis but the kernel axis (``torch.nn.utils.weight_norm(name="weight", dim=2)``), stored under fairseq's
    legacy names ``weight_g`` (1×1×K) and ``weight_v`` (C×C/groups×K)."""

    def __init__(self, channels: int, kernel_size: int, groups: int, init_std: float):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        weight = torch.empty(channels, channels // groups, kernel_size).normal_(0.0, init_std)
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight(self) -> torch.Tensor:
        """``weight_v · weight_g / ||weight_v||`` through PyTorch's fused weight-norm kernel (the one
        ``torch.nn.utils.parametrizations.weight_norm`` calls), one pass instead of a norm and two products. On
        XLA that kernel reads the device back to the host, so the same formula is written out there."""
        if is_xla_tensor(self.weight_v):
            return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return torch._weight_norm(self.weight_v, self.weight_g, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept PyTorch's parametrization names (``parametrizations.weight.original0/1`` = g/v)."""
        for new, old in (("original0", "weight_g"), ("original1", "weight_v")):
            value = state_dict.pop(f"{prefix}parametrizations.weight.{new}", None)
            if value is not None:
                state_dict[f"{prefix}{old}"] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def make_conv_pos(embed_dim: int, kernel_size: int, groups: int) -> nn.Sequential:
    """The depth-1 positional convolution: weight-normed grouped conv, SamePad, GELU (fairseq's
    ``make_conv_pos``; init N(0, sqrt(4 / (k·E))), bias 0)."""
    std = math.sqrt(4.0 / (kernel_size * embed_dim))
    return nn.Sequential(WeightNormConv1d(embed_dim, kernel_size, groups, std), SamePad(kernel_size), nn.GELU())


def make_conv_block(embed_dim: int, kernel_size: int, groups: int, depth: int) -> nn.Sequential:
    """``pos_conv_depth > 1``: a stack of plain convs with non-affine LayerNorm and GELU (data2vec style)."""
    return nn.Sequential(*[
        nn.Sequential(
            nn.Conv1d(embed_dim, embed_dim, kernel_size, padding=kernel_size // 2, groups=groups),
            SamePad(kernel_size), TransposeLast(), nn.LayerNorm(embed_dim, elementwise_affine=False),
            TransposeLast(), nn.GELU(),
        )
        for _ in range(depth)
    ])


def pad_to_multiple(x: torch.Tensor, padding_mask: Optional[torch.Tensor], multiple: int):
    """Zero-pad time (B×T×C) up to a multiple of ``multiple``, extending the padding mask; returns the
    padded x, mask and the number of frames added."""
    extra = (-x.size(1)) % multiple if multiple > 1 else 0
    if extra == 0:
        return x, padding_mask, 0
    x = F.pad(x, (0, 0, 0, extra))
    if padding_mask is None:
        padding_mask = x.new_zeros(x.shape[:2], dtype=torch.bool)
        padding_mask[:, -extra:] = True
    else:
        padding_mask = F.pad(padding_mask, (0, extra), value=True)
    return x, padding_mask, extra


class TransformerEncoder(nn.Module):
    """pos_conv + a stack of encoder layers + LayerNorm, with layerdrop (fairseq's wav2vec 2.0 ``TransformerEncoder``).

    Args (the ``Wav2Vec2Config`` option each mirrors):
        embed_dim: width of the encoder (``encoder_embed_dim``).
        num_layers: number of layers (``encoder_layers``).
        ffn_dim: hidden width of each feed-forward block (``encoder_ffn_embed_dim``).
        num_heads: attention heads (``encoder_attention_heads``).
        dropout: dropout after pos_conv and inside each layer (``dropout``).
        attention_dropout: dropout on attention weights (``attention_dropout``).
        activation_dropout: dropout after the feed-forward activation (``activation_dropout``).
        activation_fn: feed-forward activation (``activation_fn``).
        layer_norm_first: pre-LN layers and a final LayerNorm, as in Large (``layer_norm_first``).
        layerdrop: probability of skipping each layer in training (``encoder_layerdrop``); the draws come from
            the ``layerdrop_generator`` attribute, a ``torch.Generator`` (None, the default: torch's global RNG),
            which FSDP training seeds alike on every rank.
        conv_pos: kernel size of the convolutional positions (``conv_pos``).
        conv_pos_groups: groups of that convolution (``conv_pos_groups``).
        pos_conv_depth: number of stacked position convolutions (``pos_conv_depth``).
        required_seq_len_multiple: pad time to a multiple of this (``required_seq_len_multiple``).
        checkpoint_activations: recompute each layer in the backward pass (``checkpoint_activations``).
        adapter_num: language adapters per adapted layer, 0 for none (``adp_num`` with ``layer_type=trf_adp``).
        adapter_dim: their bottleneck width (``adp_dim``).
        adapter_act_fn: their activation (``adp_act_fn``).
        adapter_layers: the layers that get adapters (``adp_trf_idx``, see ``parse_adapter_layers``); with
            adapters, the forward needs the batch's ``corpus_key``.
    """

    def __init__(self, embed_dim: int, num_layers: int, ffn_dim: int, num_heads: int, dropout: float = 0.1,
                 attention_dropout: float = 0.1, activation_dropout: float = 0.0, activation_fn: str = "gelu",
                 layer_norm_first: bool = False, layerdrop: float = 0.0, conv_pos: int = 128,
                 conv_pos_groups: int = 16, pos_conv_depth: int = 1, required_seq_len_multiple: int = 1,
                 checkpoint_activations: bool = False, adapter_num: int = 0, adapter_dim: int = 64,
                 adapter_act_fn: str = "relu", adapter_layers: Optional[Sequence[int]] = None):
        super().__init__()
        self.dropout = dropout
        self.embedding_dim = embed_dim
        self.required_seq_len_multiple = required_seq_len_multiple
        self.pos_conv = self.build_pos_conv(conv_pos, conv_pos_groups, pos_conv_depth)
        self.adapter_num = adapter_num if adapter_layers else 0
        adapters = [adapter_for_layer(i, adapter_layers, adapter_num, embed_dim, adapter_dim, adapter_act_fn)
                    for i in range(num_layers)]
        self.layers = nn.ModuleList([
            self.build_encoder_layer(ffn_dim, num_heads, attention_dropout, activation_dropout, activation_fn,
                                     layer_norm_first, adapter=adapter) for adapter in adapters])
        self.layer_norm_first = layer_norm_first
        self.layer_norm = nn.LayerNorm(self.embedding_dim)
        self.layerdrop = layerdrop
        self.layerdrop_generator: Optional[torch.Generator] = None
        self.checkpoint_activations = checkpoint_activations
        self.apply(init_bert_params)

    # -- construction hooks ------------------------------------------------------------------------

    def build_pos_conv(self, conv_pos: int, conv_pos_groups: int, depth: int) -> nn.Sequential:
        """The convolutional relative position embedding (``conv_pos``, ``conv_pos_groups``, ``pos_conv_depth``)."""
        if depth > 1:
            return make_conv_block(self.embedding_dim, max(3, conv_pos // depth), conv_pos_groups, depth)
        return make_conv_pos(self.embedding_dim, conv_pos, conv_pos_groups)

    def build_encoder_layer(self, ffn_dim: int, num_heads: int, attention_dropout: float, activation_dropout: float,
                            activation_fn: str, layer_norm_first: bool, adapter: Optional[nn.Module] = None
                            ) -> nn.Module:
        """One encoder layer; ``adapter`` (an ``AdapterFast``) is added to its output (``layer_type=trf_adp``)."""
        return TransformerSentenceEncoderLayer(
            embedding_dim=self.embedding_dim, ffn_embedding_dim=ffn_dim, num_attention_heads=num_heads,
            dropout=self.dropout, attention_dropout=attention_dropout, activation_dropout=activation_dropout,
            activation_fn=activation_fn, layer_norm_first=layer_norm_first, adapter=adapter,
        )

    # -- forward hooks -----------------------------------------------------------------------------

    def embed_positions(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Add the positional convolution's output (B×T×C in and out)."""
        return x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)

    def layer_kwargs(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> Dict[str, Any]:
        """Keyword arguments every layer receives (computed once per forward, after time padding)."""
        return {"padding_mask": padding_mask, "attn_mask": attention_mask_from_padding(padding_mask)}

    # -- forward -----------------------------------------------------------------------------------

    def extract_features(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                         tgt_layer: Optional[int] = None, min_layer: int = 0, corpus_key: Any = None
                         ) -> Tuple[torch.Tensor, List[LayerResult]]:
        """B×T×C → (output of the last run layer or of ``tgt_layer``, [(x, None, ffn_out)] per layer ≥ min_layer).
        ``corpus_key`` picks the adapters of a model that has them (ignored otherwise)."""
        if any_padding(padding_mask):
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        else:
            padding_mask = None  # no padding: let SDPA run without a mask
        x = self.embed_positions(x, padding_mask)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x, padding_mask, extra = pad_to_multiple(x, padding_mask, self.required_seq_len_multiple)
        x = F.dropout(x, p=self.dropout, training=self.training)
        kwargs = self.layer_kwargs(x, padding_mask)
        if self.adapter_num:
            kwargs["adapter_id"] = adapter_index(corpus_key, self.adapter_num)
        x, layer_results = self.run_layers(x, kwargs, tgt_layer, min_layer)
        if extra:
            x = x[:, :-extra]
            layer_results = [(a[:, :-extra], z, b[:, :-extra]) for a, z, b in layer_results]
        return x, layer_results

    def run_layers(self, x: torch.Tensor, kwargs: Dict[str, Any], tgt_layer: Optional[int] = None,
                   min_layer: int = 0) -> Tuple[torch.Tensor, List[LayerResult]]:
        """The layer loop: layerdrop (one draw per layer, training only), activation checkpointing, early
        stop after ``tgt_layer``; returns that layer's output (or the last one's) and the layer results."""
        layer_results: List[LayerResult] = []
        drops = None
        if self.training and self.layerdrop > 0:
            drops = torch.rand(len(self.layers), generator=self.layerdrop_generator).tolist()
        for i, layer in enumerate(self.layers):
            if drops is None or drops[i] > self.layerdrop:
                if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                    x, ffn_out = checkpoint(layer, x, use_reentrant=False, **kwargs)
                else:
                    x, ffn_out = layer(x, **kwargs)
                if i >= min_layer:
                    layer_results.append((x, None, ffn_out))
            if i == tgt_layer:
                break
        return x, layer_results

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                layer: Optional[int] = None, corpus_key: Any = None) -> Tuple[torch.Tensor, List[LayerResult]]:
        """Encoder output; pre-LN models apply the final LayerNorm here (unless a ``layer`` is requested)."""
        x, layer_results = self.extract_features(x, padding_mask, tgt_layer=layer, corpus_key=corpus_key)
        if self.layer_norm_first and layer is None:
            x = self.layer_norm(x)
        return x, layer_results
