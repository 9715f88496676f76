"""The convolutional waveform encoder of wav2vec 2.0 (fairseq's ``ConvFeatureExtractionModel``).

State-dict keys follow fairseq: block ``i`` is a Sequential whose index 0 is the Conv1d, index 2 the norm
(``conv_layers.0.2`` GroupNorm in "default" mode, ``conv_layers.i.2.1`` LayerNorm in "layer_norm" mode).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from fairseq_lite.errors import ConfigError
from fairseq_lite.modules.fp32_norm import Fp32GroupNorm, Fp32LayerNorm
from fairseq_lite.modules.transpose_last import TransposeLast

ConvSpec = Tuple[int, int, int]  # (channels, kernel, stride)


def receptive_field(conv_layers: Sequence[ConvSpec]) -> int:
    """The samples the CNN needs for one output frame: 1 + sum of (kernel - 1) x the product of earlier strides."""
    size, jump = 1, 1
    for _, kernel, stride in conv_layers:
        size += (kernel - 1) * jump
        jump *= stride
    return size


def conv_output_lengths(lengths: torch.Tensor, conv_layers: Sequence[ConvSpec]) -> torch.Tensor:
    """Frames produced from ``lengths`` samples: floor((L - k) / s + 1) per layer, no padding
    (fairseq's ``_get_feat_extract_output_lengths``)."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.to(torch.long)


class ConvFeatureExtractionModel(nn.Module):
    """Raw audio B×L → features B×C×T through strided Conv1d blocks with GELU.

    ``mode="default"``: GroupNorm (one group per channel) after the first conv only; ``"layer_norm"``: a
    channel LayerNorm after every conv. Norms run in fp32. Convs use kaiming-normal init.
    """

    def __init__(self, conv_layers: Sequence[ConvSpec], dropout: float = 0.0, mode: str = "default",
                 conv_bias: bool = False):
        super().__init__()
        if str(mode) not in ("default", "layer_norm"):
            raise ConfigError(f"unknown extractor_mode '{mode}': choose default or layer_norm")
        self.conv_specs = [tuple(int(v) for v in spec) for spec in conv_layers]
        #: "default" mode's GroupNorm normalises each channel over time, padding included: batched features
        #: of padded utterances differ from one-at-a-time ones
        self.norm_sees_padding = str(mode) == "default"
        blocks = []
        in_channels = 1
        for i, (channels, kernel, stride) in enumerate(self.conv_specs):
            conv = nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            if str(mode) == "layer_norm":
                norm = nn.Sequential(TransposeLast(), Fp32LayerNorm(channels, elementwise_affine=True), TransposeLast())
                blocks.append(nn.Sequential(conv, nn.Dropout(dropout), norm, nn.GELU()))
            elif i == 0:
                norm = Fp32GroupNorm(channels, channels, affine=True)
                blocks.append(nn.Sequential(conv, nn.Dropout(dropout), norm, nn.GELU()))
            else:
                blocks.append(nn.Sequential(conv, nn.Dropout(dropout), nn.GELU()))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)

    @property
    def output_dim(self) -> int:
        return self.conv_specs[-1][0]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of output frames for inputs of ``lengths`` samples."""
        return conv_output_lengths(lengths, self.conv_specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x
