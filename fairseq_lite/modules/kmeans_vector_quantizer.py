"""K-means vector quantizer of vq-wav2vec (fairseq's ``KmeansVectorQuantizer``, ``vq_type: kmeans``).

Keys: ``embedding`` [num_vars, groups (1 with combine_groups), vq_dim / groups], ``projection.0.weight``
(grouped 1×1 Conv1d, no bias), ``projection.1.weight|bias`` (GroupNorm with ``groups`` groups).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.errors import ConfigError
from fairseq_lite.modules.fp32_norm import Fp32GroupNorm


def code_perplexity(indices: torch.Tensor, num_vars: int) -> torch.Tensor:
    """Sum over groups of exp(entropy) of the codeword usage in ``indices`` (N×G ids in [0, num_vars))."""
    usage = F.one_hot(indices.reshape(-1, indices.size(-1)), num_vars).float().mean(dim=0)  # G×V
    return torch.exp(-torch.sum(usage * torch.log(usage + 1e-7), dim=-1)).sum()


class KmeansVectorQuantizer(nn.Module):
    """Projects features, splits them into ``groups`` sub-vectors and replaces each by its nearest codeword.

    Gradients pass straight through to the projection; ``kmeans_loss`` = MSE(codewords, features.detach())
    + gamma · MSE(features, codewords.detach()) trains the codebook and commits the encoder.
    ``time_first=False`` takes and returns B×C×T (as vq-wav2vec uses it), else B×T×C.
    """

    def __init__(self, dim: int, num_vars: int, groups: int, combine_groups: bool, vq_dim: int,
                 time_first: bool, gamma: float = 0.25):
        super().__init__()
        if vq_dim != dim or dim % groups != 0:
            raise ConfigError(f"k-means quantizer: vq_dim ({vq_dim}) must equal the feature dim ({dim}) and be "
                              f"divisible by vq_groups ({groups}); set model.vq_dim to 0 or {dim}")
        self.groups = groups
        self.combine_groups = combine_groups
        self.input_dim = dim
        self.num_vars = num_vars
        self.vq_dim = vq_dim
        self.time_first = time_first
        self.var_dim = vq_dim // groups
        self.gamma = gamma
        self.embedding = nn.Parameter(0.01 * torch.randn(num_vars, 1 if combine_groups else groups, self.var_dim))
        self.projection = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=1, groups=groups, bias=False),
            Fp32GroupNorm(groups, dim),
        )

    @property
    def expand_embedding(self) -> torch.Tensor:
        """The codebook as [num_vars, groups, var_dim] (shared across groups with ``combine_groups``)."""
        return self.embedding.expand(self.num_vars, self.groups, self.var_dim)

    def forward_idx(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(quantized features, codeword ids B×T×G) — the API vq-wav2vec_featurize.py uses."""
        result = self.forward(x, produce_targets=True)
        return result["x"], result["targets"]

    def forward(self, x: torch.Tensor, produce_targets: bool = False) -> Dict[str, Any]:
        if self.time_first:
            x = x.transpose(1, 2)
        bsz, _, tsz = x.shape
        ze = self.projection(x)  # B×C×T
        groups = ze.view(bsz, self.groups, self.var_dim, tsz).permute(1, 0, 3, 2).reshape(self.groups, -1, self.var_dim)
        codebook = self.expand_embedding.transpose(0, 1)  # G×V×D
        idx = torch.cdist(groups.float(), codebook.float()).argmin(dim=-1)  # G×(B·T)
        zq = codebook[torch.arange(self.groups, device=x.device).unsqueeze(1), idx]  # G×(B·T)×D
        zq = zq.view(self.groups, bsz, tsz, self.var_dim).permute(1, 0, 3, 2).reshape(bsz, -1, tsz).type_as(ze)
        idx = idx.view(self.groups, bsz, tsz).permute(1, 2, 0)  # B×T×G

        result: Dict[str, Any] = {"num_vars": self.num_vars}
        with torch.no_grad():
            result["code_perplexity"] = code_perplexity(idx, self.num_vars)
        if produce_targets:
            result["targets"] = idx
        out = zq.detach() + (ze - ze.detach())  # straight-through: codewords forward, encoder gradient back
        result["x"] = out.transpose(1, 2) if self.time_first else out
        latent_loss = F.mse_loss(zq.float(), ze.detach().float())
        commitment_loss = F.mse_loss(ze.float(), zq.detach().float())
        result["kmeans_loss"] = latent_loss + self.gamma * commitment_loss
        return result
