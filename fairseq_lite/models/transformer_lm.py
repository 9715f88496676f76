"""Decoder-only transformer language model (fairseq's ``transformer_lm``), used by ``--w2l-decoder fairseqlm``.

State-dict keys are fairseq's: ``decoder.embed_tokens.weight``, ``decoder.layers.{i}.self_attn.{q,k,v,out}_proj``,
``decoder.layers.{i}.{self_attn_layer_norm,fc1,fc2,final_layer_norm}``, ``decoder.layer_norm``,
``decoder.project_in_dim/project_out_dim.weight`` (when ``decoder_input_dim``/``decoder_output_dim`` differ from
``decoder_embed_dim``: fairseq 0.12.2 leaves both at 512, so its LMs of other widths have them),
``decoder.output_projection.weight`` (older checkpoints: ``decoder.embed_out``, renamed on load). Positions
are fairseq's sinusoids (sin half then cos half, counted from ``padding_idx + 1``) or learned embeddings.
Only the standard softmax output is supported; adaptive input/softmax checkpoints are refused. fairseq's
architecture names (``transformer_lm_big``, ``transformer_lm_gbw``, ``transformer_lm_gpt`` …) build the same model
with their sizes as defaults, so checkpoints saved under them load.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.dataclass import ChoiceEnum, FairseqDataclass, II
from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.models import register_model, register_model_architecture
from fairseq_lite.models.fairseq_model import BaseFairseqModel
from fairseq_lite.modules.activations import get_activation_fn
from fairseq_lite.modules.multihead_attention import MultiheadAttention

#: fairseq's ``TransformerDecoder`` version buffer (``decoder.version``); 3 = normalised after the last layer.
DECODER_VERSION = 3.0

ACTIVATION_CHOICES = ChoiceEnum(["relu", "gelu", "gelu_fast", "gelu_accurate", "tanh", "linear"])


@dataclass
class TransformerLanguageModelConfig(FairseqDataclass):
    """fairseq's ``TransformerLanguageModelConfig`` fields that a standard-softmax LM uses.

    ``decoder_normalize_before`` defaults to True: fairseq's ``base_lm_architecture`` forces it on.
    """

    activation_fn: ACTIVATION_CHOICES = "relu"  # type: ignore[valid-type]
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    relu_dropout: float = 0.0
    decoder_embed_dim: int = 512
    decoder_output_dim: int = 512
    decoder_input_dim: int = 512
    decoder_ffn_embed_dim: int = 2048
    decoder_layers: int = 6
    decoder_attention_heads: int = 8
    decoder_normalize_before: bool = True
    no_decoder_final_norm: bool = False
    adaptive_softmax_cutoff: Optional[str] = None
    adaptive_input: bool = False
    share_decoder_input_output_embed: bool = False
    decoder_learned_pos: bool = False
    no_token_positional_embeddings: bool = False
    no_scale_embedding: bool = False
    layernorm_embedding: bool = False
    tokens_per_sample: int = II("task.tokens_per_sample")
    max_target_positions: Optional[int] = II("task.max_target_positions")


def sinusoidal_table(num_positions: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq's sinusoidal position table: [sin | cos] halves, a zero row at ``padding_idx``."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float)[:, None] * freqs[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[padding_idx] = 0
    return table


def positions_of(tokens: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """fairseq's ``make_positions``: non-pad tokens count from ``padding_idx + 1``, pads keep ``padding_idx``."""
    mask = tokens.ne(padding_idx).long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx


class TransformerDecoderLayer(nn.Module):
    """Causal self-attention + feed-forward block with fairseq's parameter names."""

    def __init__(self, cfg: TransformerLanguageModelConfig):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.normalize_before = cfg.decoder_normalize_before
        self.dropout = cfg.dropout
        self.activation_dropout = cfg.activation_dropout or cfg.relu_dropout
        self.activation = get_activation_fn(cfg.activation_fn)
        self.self_attn = MultiheadAttention(dim, cfg.decoder_attention_heads, dropout=cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.decoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def _residual(self, x: torch.Tensor, norm: nn.LayerNorm, block) -> torch.Tensor:
        y = block(norm(x) if self.normalize_before else x)
        x = x + F.dropout(y, self.dropout, self.training)
        return x if self.normalize_before else norm(x)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = self._residual(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, attn_mask=attn_mask))

        def feed_forward(h: torch.Tensor) -> torch.Tensor:
            h = F.dropout(self.activation(self.fc1(h)), self.activation_dropout, self.training)
            return self.fc2(h)

        return self._residual(x, self.final_layer_norm, feed_forward)


def _projection(in_dim: int, out_dim: int) -> Optional[nn.Linear]:
    """fairseq's bias-free ``project_in_dim`` / ``project_out_dim`` (Xavier-initialised), None when the dims agree."""
    if in_dim == out_dim:
        return None
    projection = nn.Linear(in_dim, out_dim, bias=False)
    nn.init.xavier_uniform_(projection.weight)
    return projection


class TransformerDecoder(nn.Module):
    """Token embedding (+ ``project_in_dim``) + positions → layers → final norm (+ ``project_out_dim``) → output
    projection (B×T ids → B×T×V logits)."""

    def __init__(self, cfg: TransformerLanguageModelConfig, dictionary):
        super().__init__()
        if cfg.adaptive_input or cfg.adaptive_softmax_cutoff:
            raise ConfigError("transformer_lm with adaptive input/softmax is not supported: use a standard softmax LM")
        dim, vocab = cfg.decoder_embed_dim, len(dictionary)
        input_dim, output_dim = cfg.decoder_input_dim, cfg.decoder_output_dim
        if cfg.share_decoder_input_output_embed and input_dim != output_dim:
            raise ConfigError(f"transformer_lm: share_decoder_input_output_embed needs decoder_input_dim "
                              f"({input_dim}) == decoder_output_dim ({output_dim})")
        self.padding_idx = dictionary.pad()
        self.dropout = cfg.dropout
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(dim)
        self.embed_tokens = nn.Embedding(vocab, input_dim, padding_idx=self.padding_idx)
        nn.init.normal_(self.embed_tokens.weight, mean=0, std=input_dim**-0.5)
        nn.init.zeros_(self.embed_tokens.weight[self.padding_idx])
        # fairseq projects embeddings of decoder_input_dim to decoder_embed_dim and back out to decoder_output_dim
        # (both 512 by default: an LM with another embed dim and no explicit input/output dims has both)
        self.project_in_dim = _projection(input_dim, dim)
        self.project_out_dim = _projection(dim, output_dim)
        max_positions = cfg.max_target_positions or cfg.tokens_per_sample
        self.max_positions = max_positions
        num_positions = max_positions + self.padding_idx + 1
        self.embed_positions: Optional[nn.Module] = None
        if not cfg.no_token_positional_embeddings and cfg.decoder_learned_pos:
            self.embed_positions = nn.Embedding(num_positions, dim, padding_idx=self.padding_idx)
            nn.init.normal_(self.embed_positions.weight, mean=0, std=dim**-0.5)
            nn.init.zeros_(self.embed_positions.weight[self.padding_idx])
        elif not cfg.no_token_positional_embeddings:
            self.register_buffer("sinusoids", sinusoidal_table(num_positions, dim, self.padding_idx), persistent=False)
        self.layernorm_embedding = nn.LayerNorm(dim) if cfg.layernorm_embedding else None
        self.layers = nn.ModuleList(TransformerDecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        final_norm = cfg.decoder_normalize_before and not cfg.no_decoder_final_norm
        self.layer_norm = nn.LayerNorm(dim) if final_norm else None
        # fairseq's decoder version: files without it (or below 3) get no final norm in fairseq, so ours carry 3
        self.register_buffer("version", torch.tensor([DECODER_VERSION]))
        self.output_projection = nn.Linear(output_dim, vocab, bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=output_dim**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.size(1) > self.max_positions:
            raise ValueError(
                f"sequence of {tokens.size(1)} tokens is longer than max_target_positions={self.max_positions}"
            )
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions_of(tokens, self.padding_idx))
        elif hasattr(self, "sinusoids"):
            x = x + self.sinusoids[positions_of(tokens, self.padding_idx)]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = F.dropout(x, self.dropout, self.training)
        length = tokens.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        attn_mask = causal[None, None] & tokens.ne(self.padding_idx)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        return self.output_projection(x)


@register_model("transformer_lm", dataclass=TransformerLanguageModelConfig)
class TransformerLanguageModel(BaseFairseqModel):
    """fairseq's ``TransformerLanguageModel``: ``model(tokens)`` → ``(logits, {})``."""

    def __init__(self, cfg: TransformerLanguageModelConfig, dictionary):
        super().__init__()
        self.cfg = cfg
        self.decoder = TransformerDecoder(cfg, dictionary)

    @classmethod
    def build_model(cls, cfg: TransformerLanguageModelConfig, task=None) -> "TransformerLanguageModel":
        dictionary = getattr(task, "target_dictionary", None)
        if dictionary is None:
            raise ConfigError("transformer_lm needs a task with a dictionary (task: language_modeling)")
        return cls(cfg, dictionary)

    def forward(self, src_tokens: torch.Tensor, src_lengths: Optional[torch.Tensor] = None, **kwargs):
        return self.decoder(src_tokens), {}

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None) -> torch.Tensor:
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def max_positions(self) -> int:
        return self.decoder.max_positions

    def upgrade_state_dict_named(self, state_dict: Dict[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
        """fairseq's upgrades: ``decoder.embed_out`` renamed; a decoder below version 3 has no final norm (fairseq
        drops it on load, so its outputs are what fairseq computes); the positions' ``_float_tensor`` dropped."""
        prefix = f"{name}." if name else ""
        if f"{prefix}decoder.embed_out" in state_dict:
            state_dict[f"{prefix}decoder.output_projection.weight"] = state_dict.pop(f"{prefix}decoder.embed_out")
        for key in list(state_dict):
            if key.endswith("embed_positions._float_tensor"):
                del state_dict[key]
            elif "adaptive_softmax" in key or "embed_tokens.embeddings." in key:
                raise CheckpointError(f"{key}: adaptive input/softmax LMs are not supported; use a standard softmax LM")
        version = state_dict.pop(f"{prefix}decoder.version", None)
        has_norm = f"{prefix}decoder.layer_norm.weight" in state_dict
        # fairseq_lite files from before the version buffer have the norm and no version: keep their norm
        if (version is not None and float(version.flatten()[0]) <= 2) or (version is None and not has_norm):
            self.decoder.layer_norm = None
            for key in (f"{prefix}decoder.layer_norm.weight", f"{prefix}decoder.layer_norm.bias"):
                state_dict.pop(key, None)
        state_dict[f"{prefix}decoder.version"] = torch.tensor([DECODER_VERSION])
        if self.cfg.share_decoder_input_output_embed:
            tied = state_dict[f"{prefix}decoder.embed_tokens.weight"]
            state_dict.setdefault(f"{prefix}decoder.output_projection.weight", tied)
        return state_dict


#: fairseq's ``transformer_lm`` architectures: what each sets over ``base_lm_architecture`` (input and output
#: dims follow the embedding dim there). The wiki103 ones use adaptive input/softmax, which building refuses.
_BIG = dict(decoder_layers=12, decoder_embed_dim=1024, decoder_ffn_embed_dim=4096, decoder_attention_heads=16)
_GPT = dict(dropout=0.1, attention_dropout=0.1, activation_fn="gelu")
ARCHITECTURES: Dict[str, Dict[str, object]] = {
    "transformer_lm_big": _BIG,
    "transformer_lm_baevski_wiki103": dict(_BIG, decoder_layers=16, decoder_attention_heads=8, dropout=0.3,
                                           adaptive_input=True, adaptive_softmax_cutoff="20000,60000",
                                           attention_dropout=0.1, activation_dropout=0.1,
                                           no_decoder_final_norm=True),
    "transformer_lm_baevski_gbw": dict(_BIG, decoder_embed_dim=512, dropout=0.1, attention_dropout=0.1,
                                       no_decoder_final_norm=True),
    "transformer_lm_gpt": dict(_GPT, decoder_embed_dim=768, decoder_ffn_embed_dim=3072, decoder_layers=12,
                               decoder_attention_heads=12),
    "transformer_lm_gpt2_small": dict(_GPT, decoder_embed_dim=1024, decoder_ffn_embed_dim=4096, decoder_layers=24,
                                      decoder_attention_heads=16),
    "transformer_lm_gpt2_medium": dict(_GPT, decoder_embed_dim=1280, decoder_ffn_embed_dim=5120,
                                       decoder_layers=36, decoder_attention_heads=20),
    "transformer_lm_gpt2_big": dict(_GPT, decoder_embed_dim=1600, decoder_ffn_embed_dim=6400, decoder_layers=48,
                                    decoder_attention_heads=25),
}
ARCHITECTURES["transformer_lm_wiki103"] = ARCHITECTURES["transformer_lm_baevski_wiki103"]
ARCHITECTURES["transformer_lm_gbw"] = ARCHITECTURES["transformer_lm_baevski_gbw"]


def _architecture_config(name: str, defaults: Dict[str, object]) -> type:
    """``TransformerLanguageModelConfig`` with ``defaults`` (input/output dims = the embedding dim)."""
    dim = defaults.get("decoder_embed_dim", 512)
    defaults = dict(defaults, decoder_input_dim=dim, decoder_output_dim=dim)
    base_fields = {f.name: f for f in dataclasses.fields(TransformerLanguageModelConfig)}
    fields = [(key, base_fields[key].type, dataclasses.field(default=value)) for key, value in defaults.items()]
    class_name = "".join(part.title() for part in name.split("_")) + "Config"
    return dataclasses.make_dataclass(class_name, fields, bases=(TransformerLanguageModelConfig,))


for _name, _defaults in ARCHITECTURES.items():
    register_model_architecture(_name, "transformer_lm", _architecture_config(_name, _defaults))
