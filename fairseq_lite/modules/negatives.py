"""Distractor sampling and scoring for the contrastive task (fairseq's ``Wav2Vec2Model.sample_negatives`` and
``compute_preds``), shared by wav2vec 2.0 and w2v-BERT."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from fairseq_lite.errors import DataError


def _draw_excluding_self(bsz: int, num: int, count: int, high: int, own: torch.Tensor) -> torch.Tensor:
    """B × (num·count) indices uniform over [0, high) minus each position's own index ``own`` (B × num)."""
    idx = torch.randint(0, high - 1, (bsz, num * count), device=own.device)
    own = own.repeat_interleave(count, dim=1)
    return idx + (idx >= own).long()


def _draw_near(bsz: int, num: int, count: int, high: int, own: torch.Tensor, distance: int) -> torch.Tensor:
    """B × (num·count) indices uniform over the window own ± ``distance`` (clipped to [0, high)) minus own."""
    low = (own - distance).clamp(min=0)
    size = (own + distance + 1).clamp(max=high) - low  # the window, own included: at least 2 frames
    draw = torch.rand(bsz, num, count, device=own.device) * (size - 1).unsqueeze(-1)
    idx = low.unsqueeze(-1) + draw.long()
    return (idx + (idx >= own.unsqueeze(-1)).long()).view(bsz, num * count)


def sample_negatives(y: torch.Tensor, num: int, n_negatives: int, cross_sample_negatives: int = 0,
                     padding_count: Optional[int] = None, positions: Optional[torch.Tensor] = None,
                     sample_distance: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw distractors for ``num`` positions of each row of ``y`` (B×T×C): the first ``num`` frames, or the
    frames ``positions`` (B × num, e.g. the masked frames when negatives come from everywhere).

    ``n_negatives`` per position come from the other valid positions of the same row (never the position
    itself); ``cross_sample_negatives`` come from any other position of the whole batch. Returns the
    negatives (n_negatives + cross) × B × num × C and the flat indices into ``y.view(-1, C)``.
    ``padding_count`` frames at the end of each row are excluded from the within-row draw.
    ``sample_distance`` (wav2vec 1.0's option) keeps the within-row draws at most that many frames away.
    """
    bsz, tsz, fsz = y.shape
    total = n_negatives + cross_sample_negatives
    if total == 0:
        return y.new_zeros(0), y.new_zeros(0, dtype=torch.long)
    high = tsz - (padding_count or 0)
    with torch.no_grad():
        if high <= 1:
            raise DataError(
                f"cannot sample negatives: only {high} masked frame(s) per utterance; drop very short inputs "
                "(task.min_sample_size) or raise mask_prob"
            )
        if positions is None:
            positions = torch.arange(num, device=y.device).expand(bsz, num)
        parts = []
        if n_negatives > 0:
            if sample_distance is None:
                local = _draw_excluding_self(bsz, num, n_negatives, high, positions)
            else:
                local = _draw_near(bsz, num, n_negatives, high, positions, sample_distance)
            parts.append(local + torch.arange(bsz, device=y.device).unsqueeze(1) * tsz)
        if cross_sample_negatives > 0:
            own = positions + torch.arange(bsz, device=y.device).unsqueeze(1) * tsz
            parts.append(_draw_excluding_self(bsz, num, cross_sample_negatives, bsz * tsz, own))
        # each position: its within-row draws first, then its cross-sample draws
        neg_idxs = torch.cat([p.view(bsz, num, -1) for p in parts], dim=2)
    negs = y.reshape(-1, fsz)[neg_idxs.reshape(-1)]
    negs = negs.view(bsz, num, total, fsz).permute(2, 0, 1, 3)
    return negs, neg_idxs.reshape(bsz, -1)


def contrastive_logits(x: torch.Tensor, y: torch.Tensor, negatives: torch.Tensor, logit_temp: float) -> torch.Tensor:
    """Cosine similarity / ``logit_temp`` of x (B×M×C) with [positive y; negatives], in fp32 → (1+N)×B×M
    (fairseq's ``compute_preds``). A negative numerically identical to its positive gets −inf."""
    dtype = x.dtype
    neg_is_pos = (y == negatives).all(-1)
    targets = torch.cat([y.unsqueeze(0), negatives], dim=0)
    # torch.cosine_similarity's formula (each side over its eps-clamped norm, then the dot product), with
    # x normalised once rather than once per target after broadcasting
    x = F.normalize(x.float(), dim=-1, eps=1e-8)
    logits = (x * F.normalize(targets.float(), dim=-1, eps=1e-8)).sum(-1) / logit_temp
    logits = logits.to(dtype)
    logits[1:] = logits[1:].masked_fill(neg_is_pos, float("-inf"))  # unconditional: no host read of any()
    return logits
