"""Product quantisation with straight-through Gumbel-softmax (fairseq's ``GumbelVectorQuantizer``).

Parameters keep fairseq's names: ``vars`` (1 × G·V × vq_dim/G, init U[0,1)) and ``weight_proj`` (a Linear
to G·V logits, init N(0,1) with zero bias; with ``weight_proj_depth > 1`` an MLP whose last layer is the
Linear). The temperature decays as max(max_temp · decay^updates, min_temp) through ``set_num_updates``.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn



def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Σ over groups of exp(entropy) of a G×V distribution (fairseq adds 1e-7 inside the log)."""
    return torch.exp(-torch.sum(probs * torch.log(probs + 1e-7), dim=-1)).sum()


class GumbelVectorQuantizer(nn.Module):
    """Maps B×T×dim (``time_first``) or B×dim×T inputs to B×T×vq_dim codewords, one per group concatenated."""

    def __init__(self, dim: int, num_vars: int, temp: Sequence[float], groups: int,
                 combine_groups: bool, vq_dim: int, time_first: bool, activation: nn.Module | None = None,
                 weight_proj_depth: int = 1, weight_proj_factor: int = 1, hard: bool = True, std: float = 0.0):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by groups {groups}")
        self.groups = groups
        self.combine_groups = combine_groups
        self.input_dim = dim
        self.num_vars = num_vars
        self.time_first = time_first
        self.hard = hard
        var_dim = vq_dim // groups
        num_groups = 1 if combine_groups else groups
        self.vars = nn.Parameter(torch.empty(1, num_groups * num_vars, var_dim))
        if std == 0:
            nn.init.uniform_(self.vars)
        else:
            nn.init.normal_(self.vars, mean=0.0, std=std)

        if weight_proj_depth > 1:
            activation = activation if activation is not None else nn.GELU()
            inner = dim * weight_proj_factor
            blocks = [nn.Sequential(nn.Linear(dim if i == 0 else inner, inner), activation)
                      for i in range(weight_proj_depth - 1)]
            self.weight_proj = nn.Sequential(*blocks, nn.Linear(inner, groups * num_vars))
        else:
            self.weight_proj = nn.Linear(dim, groups * num_vars)
            nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.weight_proj.bias)

        if len(temp) != 3:
            raise ValueError(f"latent_temp must be (max_temp, min_temp, decay), got {temp!r}")
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def codebook(self) -> torch.Tensor:
        """All codewords, (G·V) × vq_dim/G (groups repeated when ``combine_groups``)."""
        return self._group_vars().view(self.groups * self.num_vars, -1)

    def _group_vars(self) -> torch.Tensor:
        """Codewords as G × V × vq_dim/G."""
        vars = self.vars.view(-1, self.num_vars, self.vars.size(-1))
        return vars.expand(self.groups, -1, -1) if self.combine_groups else vars

    def sample_from_codebook(self, b: int, n: int) -> torch.Tensor:
        """``b × n`` random codeword combinations (uniform over the V^G products), b × n × vq_dim."""
        if n >= self.num_vars**self.groups:
            raise ValueError(f"cannot sample {n} distinct codebook negatives from {self.num_vars ** self.groups} codes")
        idx = torch.randint(0, self.num_vars, (b * n, self.groups), device=self.vars.device)
        vars = self._group_vars()
        z = vars[torch.arange(self.groups, device=idx.device), idx]  # (b·n) × G × d
        return z.reshape(b, n, -1)

    def to_codebook_index(self, indices: torch.Tensor) -> torch.Tensor:
        """Per-group code indices (… × G) → one flat index into the V^G product codebook."""
        res = indices.new_zeros(indices.shape[:-1])
        for g in range(self.groups):
            exponent = self.groups - g - 1
            res += indices[..., g] * (self.num_vars**exponent)
        return res

    def forward_idx(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(quantised x, per-group code indices B×T×G)."""
        res = self.forward(x, produce_targets=True)
        return res["x"], res["targets"]

    def forward(self, x: torch.Tensor, produce_targets: bool = False) -> Dict[str, Any]:
        """Dict with ``x`` (quantised), ``num_vars`` (G·V), ``code_perplexity``, ``prob_perplexity``, ``temp``
        and, with ``produce_targets``, ``targets`` (B×T×G code indices)."""
        if not self.time_first:
            x = x.transpose(1, 2)
        bsz, tsz, fsz = x.shape
        logits = self.weight_proj(x.reshape(-1, fsz)).view(bsz * tsz, self.groups, self.num_vars)
        result: Dict[str, Any] = {"num_vars": self.num_vars * self.groups}

        with torch.no_grad():
            k = logits.argmax(dim=-1)
            hard = F.one_hot(k, self.num_vars).to(logits.dtype)
            result["code_perplexity"] = _perplexity(hard.float().mean(dim=0))
        avg_probs = torch.softmax(logits.float(), dim=-1).mean(dim=0)
        result["prob_perplexity"] = _perplexity(avg_probs)
        result["temp"] = self.curr_temp

        if self.training:
            onehot = F.gumbel_softmax(logits.float(), tau=self.curr_temp, hard=self.hard).type_as(logits)
        else:
            onehot = hard
        if produce_targets:
            result["targets"] = onehot.argmax(dim=-1).view(bsz, tsz, self.groups).detach()
        # (N × G × V) · (G × V × d) → N × G × d: each group's selected codeword
        q = torch.einsum("ngv,gvd->ngd", onehot, self._group_vars().to(onehot.dtype))
        q = q.reshape(bsz, tsz, -1)
        if not self.time_first:
            q = q.transpose(1, 2)
        result["x"] = q
        return result
