"""Normalisation layers that compute in fp32 and return the input dtype (fairseq's ``Fp32GroupNorm`` /
``Fp32LayerNorm``)."""

import torch
import torch.nn.functional as F
from torch import nn


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm evaluated in fp32 (an fp32 island under fp16/bf16 training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 (an fp32 island under fp16/bf16 training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)
