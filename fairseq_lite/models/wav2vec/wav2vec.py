"""wav2vec 1.0 and vq-wav2vec: model ``wav2vec`` (fairseq's ``fairseq/models/wav2vec/wav2vec.py``).

A strided CNN turns raw audio into features ``z`` (B×C×T); vq-wav2vec quantises them (gumbel or k-means);
a causal CNN (or a GRU) aggregates them into contexts ``c``; for each of ``prediction_steps`` future steps a
transposed conv predicts the feature ``offset + i`` frames ahead, scored against the true feature and
negatives drawn from the same utterance (and optionally from the whole batch).

State-dict keys are fairseq's: ``feature_extractor.conv_layers.{i}.0.weight`` / ``.2.weight|bias``,
``vector_quantizer.*``, ``feature_aggregator.conv_layers.{i}.1.weight|bias`` / ``.3.weight|bias``,
``feature_aggregator.residual_proj.{i}.weight``, ``wav2vec_predictions.project_to_steps.weight|bias``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from fairseq_lite.dataclass import ChoiceEnum, FairseqDataclass, help_text, II, safe_eval
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.models import BaseFairseqModel, register_model
from fairseq_lite.modules.conv_feature_extractor import ConvSpec, receptive_field
from fairseq_lite.modules.fp32_norm import Fp32GroupNorm
from fairseq_lite.modules.gumbel_vector_quantizer import GumbelVectorQuantizer
from fairseq_lite.modules.kmeans_vector_quantizer import KmeansVectorQuantizer
from fairseq_lite.modules.negatives import sample_negatives
from fairseq_lite.modules.transpose_last import TransposeLast

AGGREGATOR_CHOICES = ChoiceEnum(["cnn", "gru"])
PROJECT_FEATURES_CHOICES = ChoiceEnum(["none", "same", "new"])
ACTIVATION_CHOICES = ChoiceEnum(["relu", "gelu"])
VQ_TYPE_CHOICES = ChoiceEnum(["none", "gumbel", "kmeans"])




@dataclass
class Wav2VecConfig(FairseqDataclass):
    """fairseq's ``Wav2VecConfig``: every field, name and default."""

    prediction_steps: int = field(default=12, metadata=help_text("number of steps ahead to predict"))
    sample_distance: Optional[int] = field(
        default=None,
        metadata=help_text("draw same-utterance negatives at most this many frames from the target "
                       "(fairseq_lite: a window around the target; fairseq drew from the first N frames)"),
    )
    cross_sample_negatives: int = field(default=0, metadata=help_text("num of cross sampled negatives"))
    num_negatives: int = field(default=10, metadata=help_text("num of sampled negatives"))
    conv_feature_layers: str = field(
        default="[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1), "
        "(512, 1, 1)]",
        metadata=help_text("convolutional feature extraction layers [(dim, kernel_size, stride), ...]"),
    )
    conv_aggregator_layers: str = field(
        default="[(512, 2, 1), (512, 3, 1), (512, 4, 1), (512, 5, 1), (512, 6, 1), (512, 7, 1), (512, 8, 1), "
        "(512, 9, 1), (512, 10, 1), (512, 11, 1), (512, 12, 1), (512, 13, 1)]",
        metadata=help_text("convolutional aggregator layers [(dim, kernel_size, stride), ...]"),
    )
    dropout: float = field(default=0.0, metadata=help_text("dropout to apply within the model"))
    dropout_features: float = field(default=0.0, metadata=help_text("dropout to apply to the features"))
    dropout_agg: float = field(default=0.0, metadata=help_text("dropout to apply after aggregation step"))
    aggregator: AGGREGATOR_CHOICES = field(default="cnn", metadata=help_text("type of aggregator to use"))
    gru_dim: int = field(default=512, metadata=help_text("GRU dimensionality"))
    no_conv_bias: bool = field(default=False, metadata=help_text("if set, does not learn bias for conv layers"))
    agg_zero_pad: bool = field(default=False, metadata=help_text("if set, zero pads in aggregator instead of repl pad"))
    skip_connections_feat: bool = field(default=False, metadata=help_text("if set, adds skip connections to the feature extractor"))
    skip_connections_agg: bool = field(default=True, metadata=help_text("if set, adds skip connections to the aggregator"))
    residual_scale: float = field(default=0.5, metadata=help_text("scales residual by sqrt(value)"))
    log_compression: bool = field(default=True, metadata=help_text("if set, adds a log compression to feature extractor"))
    balanced_classes: bool = field(default=False, metadata=help_text("if set, loss is scaled to balance for number of negatives"))
    project_features: PROJECT_FEATURES_CHOICES = field(
        default="none", metadata=help_text("if not none, features are projected using the (same or new) aggregator")
    )
    non_affine_group_norm: bool = field(default=False, metadata=help_text("if set, group norm is not affine"))
    offset: str = field(
        default="auto", metadata=help_text("if set to 'auto', it is computed automatically from the receptive field, "
                                       "else set to int value")
    )
    activation: ACTIVATION_CHOICES = field(default="relu", metadata=help_text("which activation function to use"))
    vq_type: VQ_TYPE_CHOICES = field(default="none", metadata=help_text("which type of quantizer to use"))
    vq_vars: int = field(default=320, metadata=help_text("project to this many vector quantized variables per group"))
    vq_groups: int = field(default=2, metadata=help_text("number of groups of latent variables"))
    vq_dim: int = field(default=0, metadata=help_text("uses this dimensionality for quantized vectors (0: the feature dim)"))
    vq_depth: int = field(default=1, metadata=help_text("number of layers for vq weight projection"))
    combine_groups: bool = field(default=False, metadata=help_text("if set, variables are shared among groups"))
    vq_temp: Tuple[float, float, float] = field(
        default=(2.0, 0.5, 0.999995),
        metadata=help_text("temperature for latent variable sampling with gumbel softmax (start, end, decay); "
                       "a list or a string such as '(2,0.5,0.999995)'"),
    )
    vq_gamma: float = field(default=0.25, metadata=help_text("gamma parameter for kmeans style vector quantization"))
    infonce: bool = II("criterion.infonce")


def parse_conv_layers(spec: Any, key: str) -> List[ConvSpec]:
    """``[(dim, kernel, stride), ...]`` from the config string (fairseq ``eval``s it; this parses literals only)."""
    layers = safe_eval(spec)
    if not isinstance(layers, (list, tuple)) or not layers or not all(
        isinstance(layer, (list, tuple)) and len(layer) == 3 and all(isinstance(v, int) and v > 0 for v in layer)
        for layer in layers
    ):
        raise ConfigError(f"model.{key} must be a non-empty list of (dim, kernel, stride) positive ints, got {spec!r}")
    return [tuple(layer) for layer in layers]


def receptive_field_offset(conv_layers: Sequence[ConvSpec]) -> int:
    """``offset: auto``: ceil(receptive field / total stride) of the feature CNN (3 for the default 8 layers)."""
    return math.ceil(receptive_field(conv_layers) / math.prod(stride for _, _, stride in conv_layers))


def _activation(name: str) -> nn.Module:
    return nn.GELU() if str(name) == "gelu" else nn.ReLU()


def _group_norm(dim: int, affine: bool) -> nn.Module:
    """GroupNorm with one group over all channels (fairseq v1's ``norm_block``), computed in fp32."""
    return Fp32GroupNorm(1, dim, affine=affine)


class Wav2VecFeatureExtractor(nn.Module):
    """Raw audio B×L → features B×C×T: Conv1d (no bias) · Dropout · GroupNorm(1) · activation per layer.

    ``skip_connections`` (``skip_connections_feat``) adds the stride-subsampled input of every layer whose
    width does not change, scaled by sqrt(residual_scale); ``log_compression`` ends with log(|x| + 1).
    """

    def __init__(self, conv_layers: Sequence[ConvSpec], dropout: float, log_compression: bool,
                 skip_connections: bool, residual_scale: float, non_affine_group_norm: bool, activation: str):
        super().__init__()
        self.conv_specs = list(conv_layers)
        blocks = []
        in_dim = 1
        for dim, kernel, stride in self.conv_specs:
            blocks.append(nn.Sequential(
                nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=False),
                nn.Dropout(dropout),
                _group_norm(dim, affine=not non_affine_group_norm),
                _activation(activation),
            ))
            in_dim = dim
        self.conv_layers = nn.ModuleList(blocks)
        self.log_compression = log_compression
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        x = source.unsqueeze(1)
        for block in self.conv_layers:
            residual = x
            x = block(x)
            if self.skip_connections and x.size(1) == residual.size(1):
                step = residual.size(2) // x.size(2)
                x = (x + residual[..., ::step][..., : x.size(2)]) * self.residual_scale
        if self.log_compression:
            x = torch.log1p(x.abs())
        return x


class ConvAggregator(nn.Module):
    """Causal CNN over features: per layer left padding of kernel−1 frames (replicated, or zeros with
    ``agg_zero_pad``) · Conv1d · Dropout · GroupNorm(1) · activation, with scaled skip connections
    (``skip_connections_agg``) through a 1×1 conv (``residual_proj.{i}``) where the width changes."""

    def __init__(self, conv_layers: Sequence[ConvSpec], embed: int, dropout: float, skip_connections: bool,
                 residual_scale: float, non_affine_group_norm: bool, conv_bias: bool, zero_pad: bool,
                 activation: str):
        super().__init__()
        blocks, projections = [], []
        in_dim = embed
        for dim, kernel, stride in conv_layers:
            pad = nn.ConstantPad1d((kernel - 1, 0), 0.0) if zero_pad else nn.ReplicationPad1d((kernel - 1, 0))
            blocks.append(nn.Sequential(
                pad,
                nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=conv_bias),
                nn.Dropout(dropout),
                _group_norm(dim, affine=not non_affine_group_norm),
                _activation(activation),
            ))
            # None keeps the list index equal to the layer index, as in fairseq's state dicts
            projections.append(nn.Conv1d(in_dim, dim, 1, bias=False) if skip_connections and in_dim != dim else None)
            in_dim = dim
        self.conv_layers = nn.Sequential(*blocks)
        self.residual_proj = nn.ModuleList(projections)
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, projection in zip(self.conv_layers, self.residual_proj):
            residual = x
            x = block(x)
            if self.skip_connections:
                if projection is not None:
                    residual = projection(residual)
                x = (x + residual) * self.residual_scale
        return x


class _GRUOutput(nn.Module):
    """Takes the output sequence of an ``nn.GRU`` (B×T×H) back to B×H×T."""

    def forward(self, output: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return output[0].transpose(1, 2)


def gru_aggregator(embed: int, gru_dim: int) -> nn.Sequential:
    """``aggregator: gru``: one GRU layer; keys ``feature_aggregator.1.weight_ih_l0`` etc. It is batch-first,
    so the recurrence runs over time. fairseq's GRU is sequence-first but is fed B×T×C, so its recurrence runs
    over the batch axis (a bug): fairseq gru checkpoints load, and compute what the model was meant to."""
    return nn.Sequential(TransposeLast(), nn.GRU(embed, gru_dim, num_layers=1, batch_first=True), _GRUOutput())


class Wav2VecPredictionsModel(nn.Module):
    """Per-step predictions of future features and their scores against true features and negatives.

    ``infonce``: logits of shape (rows, 1 + negatives) with the true feature in column 0 and integer
    targets 0 (cross-entropy). Otherwise: one flat vector of binary logits with 0/1 labels; with
    ``balanced_classes`` the labels come as ``(labels, weights)``, negatives weighted 1/num_negatives.
    """

    def __init__(self, in_dim: int, out_dim: int, prediction_steps: int, n_negatives: int,
                 cross_sample_negatives: int, sample_distance: Optional[int], dropout: float, offset: int,
                 balanced_classes: bool, infonce: bool):
        super().__init__()
        self.project_to_steps = nn.ConvTranspose2d(in_dim, out_dim, (1, prediction_steps))
        self.dropout = nn.Dropout(dropout)
        self.n_negatives = n_negatives
        self.cross_sample_negatives = cross_sample_negatives
        self.sample_distance = sample_distance
        self.offset = offset
        self.balanced_classes = balanced_classes
        self.infonce = infonce

    def sample_negatives(self, y: torch.Tensor) -> torch.Tensor:
        """Negatives K×B×C×T for features ``y`` (B×C×T): ``num_negatives`` other frames of the same
        utterance (within ``sample_distance`` of the target when set) and ``cross_sample_negatives`` frames
        of the whole batch, never the target frame itself (fairseq v1 excluded a wrong frame here)."""
        frames = y.transpose(1, 2)
        negatives, _ = sample_negatives(frames, frames.size(1), self.n_negatives, self.cross_sample_negatives,
                                        sample_distance=self.sample_distance)
        return negatives.permute(0, 1, 3, 2)  # K×B×T×C → K×B×C×T

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        x = self.dropout(self.project_to_steps(x.unsqueeze(-1)))  # B×C×T×steps
        targets = torch.cat([y.unsqueeze(0), self.sample_negatives(y)], dim=0)  # K×B×C×T, 0 = true
        copies = targets.size(0)
        tsz, steps = x.size(2), min(x.size(3), x.size(2) - self.offset)
        if steps <= 0:
            raise DataError(f"wav2vec: {tsz} feature frames leave nothing to predict at offset {self.offset}: "
                            f"use longer audio (raise task.min_sample_size)")
        logits, labels, weights = [], [], []
        for step in range(steps):
            shift = self.offset + step
            prediction, future = x[..., : tsz - shift, step], targets[..., shift:]
            if self.infonce:
                logits.append(torch.einsum("bct,kbct->tbk", prediction, future).reshape(-1, copies))
            else:
                scores = torch.einsum("bct,kbct->kbt", prediction, future).reshape(-1)
                positives = scores.numel() // copies
                label = torch.zeros_like(scores)
                label[:positives] = 1.0
                logits.append(scores)
                labels.append(label)
                if self.balanced_classes:
                    weight = torch.full_like(scores, 1.0 / self.n_negatives)
                    weight[:positives] = 1.0
                    weights.append(weight)
        logits = torch.cat(logits)
        if self.infonce:
            return logits, logits.new_zeros(logits.size(0), dtype=torch.long)
        labels = torch.cat(labels)
        return logits, ((labels, torch.cat(weights)) if self.balanced_classes else labels)


@register_model("wav2vec", dataclass=Wav2VecConfig)
class Wav2VecModel(BaseFairseqModel):
    """wav2vec 1.0 (``vq_type: none``) and vq-wav2vec (``gumbel`` / ``kmeans``)."""

    def __init__(self, cfg: Wav2VecConfig):
        super().__init__()
        if not isinstance(cfg.infonce, bool):
            raise ConfigError("model.infonce is unresolved: set criterion.infonce (or model.infonce) to true or false")
        if cfg.sample_distance is not None and cfg.sample_distance < 1:
            raise ConfigError(f"model.sample_distance must be at least 1 (or None), got {cfg.sample_distance}")
        if cfg.num_negatives < 1 and cfg.cross_sample_negatives < 1:
            raise ConfigError("model.num_negatives and model.cross_sample_negatives are both 0: wav2vec needs negatives")
        self.cfg = cfg
        feature_layers = parse_conv_layers(cfg.conv_feature_layers, "conv_feature_layers")
        embed = feature_layers[-1][0]
        self.feature_extractor = Wav2VecFeatureExtractor(
            feature_layers, dropout=0.0, log_compression=cfg.log_compression,
            skip_connections=cfg.skip_connections_feat, residual_scale=cfg.residual_scale,
            non_affine_group_norm=cfg.non_affine_group_norm, activation=cfg.activation)

        self.vector_quantizer = self._build_quantizer(cfg, embed)
        feature_dim = embed if self.vector_quantizer is None else (cfg.vq_dim or embed)

        if str(cfg.offset) == "auto":
            self.offset = receptive_field_offset(feature_layers)
        else:
            try:
                self.offset = int(cfg.offset)
            except ValueError:
                raise ConfigError(f"model.offset must be 'auto' or an integer, got {cfg.offset!r}") from None

        self.feature_aggregator, agg_dim = self._build_aggregator(cfg, feature_dim)
        self.wav2vec_predictions = Wav2VecPredictionsModel(
            in_dim=agg_dim, out_dim=feature_dim, prediction_steps=cfg.prediction_steps,
            n_negatives=cfg.num_negatives, cross_sample_negatives=cfg.cross_sample_negatives,
            sample_distance=cfg.sample_distance, dropout=cfg.dropout, offset=self.offset,
            balanced_classes=cfg.balanced_classes, infonce=cfg.infonce)
        self.dropout_feats = nn.Dropout(cfg.dropout_features)
        self.dropout_agg = nn.Dropout(cfg.dropout_agg)
        if str(cfg.project_features) == "same":
            self.project_features = self.feature_aggregator
        elif str(cfg.project_features) == "new":
            self.project_features, _ = self._build_aggregator(cfg, feature_dim)
        else:
            self.project_features = None

    @staticmethod
    def _build_quantizer(cfg: Wav2VecConfig, embed: int) -> Optional[nn.Module]:
        vq_type = str(cfg.vq_type)
        if vq_type == "none":
            return None
        vq_dim = cfg.vq_dim if cfg.vq_dim > 0 else embed
        if vq_type == "gumbel":
            temp = safe_eval(cfg.vq_temp)
            if not isinstance(temp, (list, tuple)) or len(temp) != 3:
                raise ConfigError(f"model.vq_temp must be (start, end, decay), got {cfg.vq_temp!r}")
            return GumbelVectorQuantizer(
                dim=embed, num_vars=cfg.vq_vars, temp=tuple(float(t) for t in temp), groups=cfg.vq_groups,
                combine_groups=cfg.combine_groups, vq_dim=vq_dim, time_first=False,
                activation=_activation(cfg.activation), weight_proj_depth=cfg.vq_depth, weight_proj_factor=2)
        return KmeansVectorQuantizer(
            dim=embed, num_vars=cfg.vq_vars, groups=cfg.vq_groups, combine_groups=cfg.combine_groups,
            vq_dim=vq_dim, time_first=False, gamma=cfg.vq_gamma)

    @staticmethod
    def _build_aggregator(cfg: Wav2VecConfig, embed: int) -> Tuple[nn.Module, int]:
        if str(cfg.aggregator) == "gru":
            return gru_aggregator(embed, cfg.gru_dim), cfg.gru_dim
        layers = parse_conv_layers(cfg.conv_aggregator_layers, "conv_aggregator_layers")
        if any(stride != 1 for _, _, stride in layers):
            raise ConfigError("model.conv_aggregator_layers: the causal aggregator needs stride 1 in every layer")
        aggregator = ConvAggregator(
            layers, embed=embed, dropout=cfg.dropout, skip_connections=cfg.skip_connections_agg,
            residual_scale=cfg.residual_scale, non_affine_group_norm=cfg.non_affine_group_norm,
            conv_bias=not cfg.no_conv_bias, zero_pad=cfg.agg_zero_pad, activation=cfg.activation)
        return aggregator, layers[-1][0]

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """``cpc_logits`` / ``cpc_targets`` for the criterion, plus the quantizer's statistics."""
        if padding_mask is not None and padding_mask.any():
            raise ConfigError("wav2vec 1.0 trains on equal-length crops: unset task.enable_padding")
        result: Dict[str, Any] = {}
        features = self.feature_extractor(source)
        if self.vector_quantizer is not None:
            quantized = self.vector_quantizer(features)
            features = quantized.pop("x")
            result.update(quantized)
        x = self.dropout_agg(self.feature_aggregator(self.dropout_feats(features)))
        if self.project_features is not None:
            features = self.project_features(features)
        result["cpc_logits"], result["cpc_targets"] = self.wav2vec_predictions(x, features)
        return result

    def max_positions(self) -> Optional[int]:
        return None

    def get_logits(self, net_output: Dict[str, Any]) -> torch.Tensor:
        return net_output["cpc_logits"]

    def get_targets(self, sample: Any, net_output: Dict[str, Any]) -> torch.Tensor:
        targets = net_output["cpc_targets"]
        return (targets[0] if isinstance(targets, tuple) else targets).contiguous()

    def get_target_weights(self, targets: Any, net_output: Dict[str, Any]) -> Optional[torch.Tensor]:
        """Per-logit BCE weights (``balanced_classes``), else None."""
        targets = net_output["cpc_targets"]
        return targets[1] if isinstance(targets, tuple) else None

    def get_extra_losses(self, net_output: Dict[str, Any]) -> Optional[torch.Tensor]:
        """gumbel: num_vars − prob_perplexity (un-normalised); k-means: latent + gamma·commitment MSE."""
        if "prob_perplexity" in net_output:
            return net_output["num_vars"] - net_output["prob_perplexity"]
        return net_output.get("kmeans_loss")
