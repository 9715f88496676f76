"""``AddTargetDataset``: attach encoded label sequences to an audio dataset (fairseq's ``add_target_dataset.py``)."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, List, Sequence

import numpy as np
import torch


def collate_tokens(values: Sequence[torch.Tensor], pad_idx: int) -> torch.LongTensor:
    """Right-pad 1-D token tensors with ``pad_idx`` into a B×S LongTensor (fairseq's ``collate_tokens``)."""
    width = max((len(v) for v in values), default=0)
    out = torch.full((len(values), width), pad_idx, dtype=torch.long)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
    return out


class LabelTable:
    """Encoded label lines as one int32 buffer plus offsets (cheap to share with DataLoader workers)."""

    def __init__(self, encoded: Sequence[torch.Tensor]):
        lengths = np.fromiter((len(t) for t in encoded), dtype=np.int64, count=len(encoded))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.tokens = torch.cat([t.to(torch.int32) for t in encoded]) if len(encoded) else torch.zeros(0, dtype=torch.int32)
        self.lengths = lengths

    @classmethod
    def from_lines(cls, lines: Iterable[str], encode: Callable[[str], torch.Tensor], chunk: int = 8192
                   ) -> "LabelTable":
        """Encode ``lines`` ``chunk`` at a time straight into the int32 buffer, so that millions of label lines
        never exist as Python strings or tensors all at once."""
        table = cls([])
        pieces, lengths, batch = [], [], []
        for line in itertools.chain(lines, [None]):
            if line is not None:
                batch.append(encode(line))
            if batch and (line is None or len(batch) == chunk):
                lengths.append(np.fromiter((len(t) for t in batch), dtype=np.int64, count=len(batch)))
                pieces.append(torch.cat(batch).to(torch.int32))
                batch = []
        if pieces:
            table.lengths = np.concatenate(lengths)
            table.offsets = np.zeros(len(table.lengths) + 1, dtype=np.int64)
            np.cumsum(table.lengths, out=table.offsets[1:])
            table.tokens = torch.cat(pieces)
        return table

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]].long()


class AddTargetDataset(torch.utils.data.Dataset):
    """Items of ``dataset`` plus ``label``; the collater adds ``target``, ``target_lengths``, ``ntokens``.

    ``labels[i]`` is the encoded label of item ``i``. With ``add_to_input`` (fairseq's ``autoregressive``)
    the target gets eos appended and ``net_input["prev_output_tokens"]`` = eos + label.
    """

    def __init__(self, dataset: Any, labels: LabelTable, pad: int, eos: int, batch_targets: bool = True,
                 add_to_input: bool = False):
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} examples")
        self.dataset = dataset
        self.labels = labels
        self.pad = pad
        self.eos = eos
        self.batch_targets = batch_targets
        self.add_to_input = add_to_input

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset[index]
        item["label"] = self.labels[index]
        return item

    # sizes and order are the audio dataset's
    @property
    def sizes(self) -> np.ndarray:
        return self.dataset.sizes

    @property
    def skipped_indices(self) -> np.ndarray:
        return self.dataset.skipped_indices

    def ordered_indices(self) -> np.ndarray:
        return self.dataset.ordered_indices()

    def num_tokens(self, index: int) -> int:
        return self.dataset.num_tokens(index)

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        return self.dataset.num_tokens_vec(indices)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def size(self, index: int):
        """(audio size, label length), as fairseq's."""
        return self.dataset.size(index), int(self.labels.lengths[index])

    def filter_indices_by_size(self, indices: np.ndarray, max_sizes: Any):
        """Drop indices whose audio or label is longer than ``max_sizes`` = (audio, label) or one int."""
        audio_max, label_max = max_sizes if isinstance(max_sizes, (tuple, list)) else (max_sizes, None)
        keep = np.ones(len(indices), dtype=bool)
        if audio_max is not None:
            keep &= self.dataset.sizes[indices] <= audio_max
        if label_max is not None:
            keep &= self.labels.lengths[indices] <= label_max
        return indices[keep], indices[~keep]

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        collated = self.dataset.collater(samples)
        if not collated:
            return collated
        kept = set(collated["id"].tolist())
        target = [s["label"] for s in samples if s["id"] in kept]
        if self.add_to_input:
            eos = torch.LongTensor([self.eos])
            prev_output_tokens = [torch.cat([eos, t]) for t in target]
            target = [torch.cat([t, eos]) for t in target]
        if self.batch_targets:
            collated["target_lengths"] = torch.LongTensor([len(t) for t in target])
            collated["ntokens"] = int(collated["target_lengths"].sum().item())
            target = collate_tokens(target, self.pad)
            if self.add_to_input:
                collated["net_input"]["prev_output_tokens"] = collate_tokens(prev_output_tokens, self.pad)
        else:
            collated["ntokens"] = sum(len(t) for t in target)
            if self.add_to_input:
                collated["net_input"]["prev_output_tokens"] = prev_output_tokens
        collated["target"] = target
        return collated
