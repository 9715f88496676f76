"""Greedy CTC decoding (fairseq's ``--w2l-decoder viterbi``), batched and without flashlight.

fairseq runs flashlight's ``CpuViterbiPath`` with all-zero transitions, which is exactly the per-frame
argmax; here the argmax, the collapse of repeats and the removal of blanks are tensor operations over
the whole batch, so one call decodes a batch with no Python loop over frames.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from fairseq_lite.decoding.hypotheses import Hypothesis, blank_index


class ViterbiDecoder:
    """Argmax path → collapse repeats → drop blanks, for a (B, T, V) batch of emissions."""

    def __init__(self, tgt_dict):
        self.tgt_dict = tgt_dict
        self.blank = blank_index(tgt_dict)

    def decode(self, emissions: torch.Tensor, lengths: Optional[torch.Tensor] = None, num_workers: int = 1
               ) -> List[List[Hypothesis]]:
        """One-best hypothesis per utterance; ``lengths`` (B,) gives the valid frames of padded rows.

        The score is the sum of the best per-frame emission over the valid frames (fairseq reports 0).
        ``num_workers`` is the flashlight decoders' argument: the batch runs as one vectorised pass anyway.
        """
        if emissions.dim() != 3:
            raise ValueError(f"emissions must be (batch, frames, units), got shape {tuple(emissions.shape)}")
        batch, frames, _ = emissions.shape
        best, path = emissions.detach().max(dim=-1)
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.long)
        valid = torch.arange(frames, device=path.device)[None, :] < lengths.to(path.device)[:, None]
        keep = valid & (path != self.blank)
        keep[:, 1:] &= path[:, 1:] != path[:, :-1]
        counts = keep.sum(dim=1).tolist()
        tokens = path[keep].cpu().split(counts)
        steps = keep.nonzero()[:, 1].cpu().split(counts)
        scores = (best * valid).sum(dim=1).tolist()
        return [
            [Hypothesis(tokens=tok, score=score, timesteps=step.tolist())]
            for tok, step, score in zip(tokens, steps, scores)
        ]
