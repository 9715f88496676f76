"""Span masking for wav2vec 2.0 (fairseq's ``compute_mask_indices`` in ``data/data_utils.py``).

One vectorised implementation, ``compute_mask_indices``, and :class:`Masker`, which holds a model's time and
channel mask settings and applies both (wav2vec 2.0 pretraining and CTC fine-tuning). It follows fairseq's current semantics (``num_mask_ver=2``,
``idc_select_ver=1``): per row, ``int(mask_prob * valid_len / mask_length + U[0,1))`` span starts (at least
``min_masks``) drawn without replacement, spans clipped to the valid (unpadded) length and allowed to
overlap, so p=0.65, L=10 covers about 49% of the frames. ``no_overlap`` places spans that never touch,
with at least ``min_space`` unmasked frames between them (fairseq's version of this path crashes on
NumPy >= 1.24; this one is a stars-and-bars placement, uniform over valid layouts). :class:`PrecomputedMasking`
draws a batch's masks in the dataset's collater instead (``task.precompute_mask_indices``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.modules.conv_feature_extractor import conv_output_lengths

MASK_TYPES = ("static", "uniform", "normal", "poisson")


def _make_rng(seed: Optional[int], epoch: Optional[int], indices: Optional[Sequence[int]]) -> np.random.Generator:
    """A generator seeded from (seed, epoch, indices) when all are given, else from torch's RNG so that
    ``torch.manual_seed`` makes model-side masks reproducible."""
    if seed is not None and epoch is not None and indices is not None:
        return np.random.default_rng([int(seed), int(epoch), *(int(i) for i in indices)])
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def _pick_smallest(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Boolean B×N: in each row, the ``counts[row]`` positions with the smallest keys (inf = not eligible)."""
    ranks = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return ranks < counts[:, None]


def _span_lengths(rng: np.random.Generator, shape: Tuple[int, int], mask_type: str, mask_length: int,
                  mask_other: float) -> np.ndarray:
    if mask_type == "static":
        return np.full(shape, mask_length, dtype=np.int64)
    if mask_type == "uniform":
        return rng.integers(int(mask_other), mask_length * 2 + 1, size=shape)
    if mask_type == "normal":
        return np.maximum(1, np.rint(rng.normal(mask_length, mask_other, size=shape))).astype(np.int64)
    if mask_type == "poisson":
        return np.rint(rng.poisson(mask_length, size=shape)).astype(np.int64)
    raise ValueError(f"unknown mask selection '{mask_type}': choose one of {', '.join(MASK_TYPES)}")


def _overlapping_starts(rng, sizes, num_mask, lengths, active):
    """Span starts drawn without replacement from [0, size - min_len) per row (spans may overlap)."""
    big = np.iinfo(np.int64).max
    min_len = np.where(active, lengths, big).min(axis=1, initial=big)
    min_len = np.where(num_mask > 0, min_len, 0)
    too_long = sizes - min_len <= num_mask
    min_len = np.where(too_long, sizes - num_mask - 1, min_len)
    ranges = sizes - min_len  # > num_mask for every row
    width = max(int(ranges.max(initial=1)), 1)
    keys = rng.random((len(sizes), width))
    keys[np.arange(width)[None, :] >= ranges[:, None]] = np.inf
    order = np.argsort(keys, axis=1)
    return order[:, : lengths.shape[1]]


def _non_overlapping_starts(rng, sizes, lengths, min_space):
    """Starts of spans that do not overlap and keep ``min_space`` free frames between neighbours.

    Spans that do not fit are dropped (their length is set to 0). Gaps are placed uniformly: choose the
    n span positions among (slack + n) slots, then shift each by the lengths and spaces before it."""
    n_max = lengths.shape[1]
    gaps = np.arange(n_max)[None, :] * min_space
    fits = np.cumsum(lengths, axis=1) + gaps <= sizes[:, None]
    fits &= np.cumsum(~fits, axis=1) == 0
    lengths = np.where(fits, lengths, 0)
    count = fits.sum(axis=1)
    slack = sizes - lengths.sum(axis=1) - np.maximum(count - 1, 0) * min_space
    slots = slack + count
    width = max(int(slots.max(initial=1)), 1)
    keys = rng.random((len(sizes), width))
    keys[np.arange(width)[None, :] >= slots[:, None]] = np.inf
    chosen = np.sort(np.argsort(keys, axis=1)[:, :n_max], axis=1)  # first `count` are valid slots
    col = np.arange(n_max)[None, :]
    before = np.cumsum(lengths, axis=1) - lengths + col * min_space
    starts = chosen - col + before
    return np.where(fits, starts, 0), lengths


def _draw_spans(rng: np.random.Generator, sizes: np.ndarray, mask_prob: float, mask_length: int, mask_type: str,
                mask_other: float, min_masks: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spans per row, B×N span lengths, B×N which spans exist): ``int(mask_prob · size / mask_length + U)`` spans
    (at least ``min_masks``) with lengths from ``mask_type``; a row whose spans all came out empty gets one."""
    bsz = len(sizes)
    num_mask = (mask_prob * sizes / float(mask_length) + rng.random(bsz)).astype(np.int64)
    num_mask = np.maximum(min_masks, num_mask)
    n_max = int(num_mask.max(initial=0))
    active = np.arange(n_max)[None, :] < num_mask[:, None]
    lengths = np.where(active, _span_lengths(rng, (bsz, n_max), mask_type, mask_length, mask_other), 0)
    if mask_type != "static":  # as fairseq
        empty = (lengths.sum(axis=1) == 0) & (num_mask > 0)
        if n_max:
            lengths[empty, 0] = np.minimum(mask_length, sizes[empty] - 1)
    return num_mask, lengths, active


def _paint_spans(starts: np.ndarray, lengths: np.ndarray, sizes: np.ndarray, all_sz: int) -> np.ndarray:
    """Boolean B×T of the spans (B×N starts and lengths) clipped to each row's size: a difference array with
    +1 at each start and -1 after each end, summed along time."""
    bsz = len(sizes)
    ends = np.minimum(starts + lengths, sizes[:, None])
    live = (lengths > 0) & (starts < sizes[:, None])
    delta = np.zeros((bsz, all_sz + 1), dtype=np.int64)
    rows = np.broadcast_to(np.arange(bsz)[:, None], starts.shape)
    np.add.at(delta, (rows[live], np.minimum(starts[live], all_sz)), 1)
    np.add.at(delta, (rows[live], ends[live]), -1)
    mask = np.cumsum(delta[:, :all_sz], axis=1) > 0
    return mask & (np.arange(all_sz)[None, :] < sizes[:, None])


def _refuse_full_cover(counts: np.ndarray, sizes: np.ndarray, indices: Optional[Sequence[int]], unit: str) -> None:
    """A row masked end to end leaves nothing to predict from: an error naming what to lower."""
    full = np.flatnonzero((counts >= sizes) & (counts > 0))
    if not len(full):
        return
    i = int(full[0])
    if unit == "channels":
        raise ConfigError(f"channel masking would cover all {int(sizes[i])} channels: lower "
                          "model.mask_channel_prob / model.mask_channel_length")
    where = f" (dataset index {indices[i]})" if indices is not None else ""
    raise DataError(
        f"masking would cover the whole sequence of {int(sizes[i])} frames{where}: "
        "lower mask_prob / mask_length or drop such short inputs (min_sample_size)"
    )


def _equalise_counts(rng: np.random.Generator, mask: np.ndarray, counts: np.ndarray, sizes: np.ndarray,
                     add_masks: bool) -> np.ndarray:
    """``require_same_masks``: every row masked the smallest count of the batch (a random subset of its masked
    positions), or with ``add_masks`` the largest (random extra valid positions)."""
    bsz, all_sz = mask.shape
    target = int(counts.max() if add_masks else counts.min())
    over = counts > target
    if over.any():
        keys = np.where(mask, rng.random(mask.shape), np.inf)
        mask = np.where(over[:, None], _pick_smallest(keys, np.full(bsz, target)), mask)
    under = counts < target
    if under.any():
        valid = np.arange(all_sz)[None, :] < sizes[:, None]
        keys = np.where(~mask & valid, rng.random(mask.shape), np.inf)
        mask |= _pick_smallest(keys, np.where(under, target - counts, 0))
    return mask


def compute_mask_indices(
    shape: Tuple[int, int],
    padding_mask: Optional[torch.Tensor | np.ndarray],
    mask_prob: float,
    mask_length: int,
    mask_type: str = "static",
    mask_other: float = 0.0,
    min_masks: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    require_same_masks: bool = True,
    mask_dropout: float = 0.0,
    add_masks: bool = False,
    seed: Optional[int] = None,
    epoch: Optional[int] = None,
    indices: Optional[Sequence[int]] = None,
    rng: Optional[np.random.Generator] = None,
    unit: str = "frames",
) -> np.ndarray:
    """Boolean B×T array of masked positions (fairseq's ``compute_mask_indices``, same arguments).

    ``padding_mask`` (B×T, True = padding at the end of the row) keeps spans inside each row's valid
    length. ``require_same_masks`` subsamples every row to the smallest masked count of the batch (or tops
    up to the largest with ``add_masks``) so that masked frames reshape to B×M; ``mask_dropout`` then
    unmasks that fraction of each row. Randomness comes from ``rng``, else from (seed, epoch, indices),
    else from torch's global generator. ``unit`` ("frames" or "channels") names the masked axis in errors.
    """
    bsz, all_sz = shape
    mask_type = str(mask_type)
    if rng is None:
        rng = _make_rng(seed, epoch, indices)
    if padding_mask is not None:
        pad = padding_mask.cpu().numpy() if isinstance(padding_mask, torch.Tensor) else np.asarray(padding_mask)
        sizes = all_sz - pad.astype(np.int64).sum(axis=1)
    else:
        sizes = np.full(bsz, all_sz, dtype=np.int64)

    num_mask, lengths, active = _draw_spans(rng, sizes, mask_prob, mask_length, mask_type, mask_other, min_masks)
    if no_overlap:
        starts, lengths = _non_overlapping_starts(rng, sizes, lengths, int(min_space))
    else:
        starts = _overlapping_starts(rng, sizes, num_mask, lengths, active)

    mask = _paint_spans(starts, lengths, sizes, all_sz)
    counts = mask.sum(axis=1)
    _refuse_full_cover(counts, sizes, indices, unit)
    if require_same_masks and bsz > 0:
        mask = _equalise_counts(rng, mask, counts, sizes, add_masks)
    if mask_dropout > 0:
        counts = mask.sum(axis=1)
        holes = np.rint(counts * mask_dropout).astype(np.int64)
        keys = np.where(mask, rng.random(mask.shape), np.inf)
        mask &= ~_pick_smallest(keys, holes)
    return mask


@dataclass(frozen=True)
class Masker:
    """Time and channel span masking of B×T×C features (fairseq's ``Wav2Vec2Model.apply_mask``).

    The fields are the ``Wav2Vec2Config`` / ``Wav2Vec2AsrConfig`` options of the same names: time spans of
    ``mask_length`` frames replaced by the model's ``mask_emb`` (at least 2 spans per row, as fairseq), channel
    spans of ``mask_channel_length`` zeroed for the whole utterance, before or after time masking.
    """

    mask_prob: float = 0.65
    mask_length: int = 10
    mask_selection: str = "static"
    mask_other: float = 0.0
    no_mask_overlap: bool = False
    mask_min_space: int = 1
    require_same_masks: bool = True
    mask_dropout: float = 0.0
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    mask_channel_selection: str = "static"
    mask_channel_other: float = 0.0
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1
    mask_channel_before: bool = False

    def channel_mask(self, bsz: int, channels: int, device: torch.device,
                     rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """B×1×C boolean channel mask (broadcast over time); drawn from ``rng``, else from torch's generator."""
        mask = compute_mask_indices(
            (bsz, channels), None, self.mask_channel_prob, self.mask_channel_length, self.mask_channel_selection,
            self.mask_channel_other, no_overlap=self.no_mask_channel_overlap, min_space=self.mask_channel_min_space,
            rng=rng, unit="channels",
        )
        return torch.from_numpy(mask).to(device).unsqueeze(1)

    def time_mask(self, bsz: int, frames: int, padding_mask: Optional[torch.Tensor | np.ndarray],
                  device: torch.device, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """B×T boolean time mask inside each row's unpadded frames; drawn from ``rng``, else from torch's generator."""
        mask = compute_mask_indices(
            (bsz, frames), padding_mask, self.mask_prob, self.mask_length, self.mask_selection, self.mask_other,
            min_masks=2, no_overlap=self.no_mask_overlap, min_space=self.mask_min_space,
            require_same_masks=self.require_same_masks, mask_dropout=self.mask_dropout, rng=rng,
        )
        return torch.from_numpy(mask).to(device)

    def __call__(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], mask_emb: torch.Tensor,
                 mask_indices: Optional[torch.Tensor] = None, mask_channel_indices: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(masked x, the B×T time mask or None); given ``mask_indices`` / ``mask_channel_indices`` are used
        instead of drawing new ones (fairseq's ``mask_indices`` argument)."""
        bsz, frames, channels = x.shape
        if self.mask_channel_prob > 0 and self.mask_channel_before:
            x = x.masked_fill(self.channel_mask(bsz, channels, x.device), 0.0)
        if self.mask_prob > 0:
            if mask_indices is None:
                mask_indices = self.time_mask(bsz, frames, padding_mask, x.device)
            elif tuple(mask_indices.shape) != (bsz, frames):
                raise ValueError(f"mask_indices is {tuple(mask_indices.shape)} but the features are {bsz}×{frames} "
                                 "frames: precomputed masks need the model's conv_feature_layers (and no "
                                 "crop_seq_to_multiple cropping)")
            x = torch.where(mask_indices.unsqueeze(-1), mask_emb.to(x.dtype), x)
        else:
            mask_indices = None
        if self.mask_channel_prob > 0 and not self.mask_channel_before:
            if mask_channel_indices is None:
                mask_channel_indices = self.channel_mask(bsz, channels, x.device)
            elif mask_channel_indices.dim() == 2:
                mask_channel_indices = mask_channel_indices.unsqueeze(1)
            x = x.masked_fill(mask_channel_indices, 0.0)
        return x, mask_indices


#: The config options a :class:`Masker` is built from (the same names in pretraining and fine-tuning configs).
MASKER_SETTINGS = tuple(f.name for f in dataclasses.fields(Masker))


def masked_frames(x: torch.Tensor, mask_indices: torch.Tensor) -> torch.Tensor:
    """The masked frames of ``x`` (B×T×C) as B×M×C: every row masks M frames (``require_same_masks``)."""
    return x[mask_indices].view(x.size(0), -1, x.size(-1))


def masker_from_config(cfg) -> Masker:
    """A :class:`Masker` from any config with ``MASKER_SETTINGS`` fields (choice enums as their names); a field
    the config lacks (HuBERT's has no ``require_same_masks``, ``mask_dropout``, ``mask_channel_before``) keeps the
    default fairseq uses for it."""
    defaults = Masker()
    values = {name: getattr(cfg, name, getattr(defaults, name)) for name in MASKER_SETTINGS}
    for name in ("mask_selection", "mask_channel_selection"):
        values[name] = str(values[name])
    return Masker(**values)


@dataclass(frozen=True)
class PrecomputedMasking:
    """Masks drawn by the dataset's collater (fairseq's ``task.precompute_mask_indices`` with
    ``task.inferred_w2v_config``): ``masker`` holds the settings, ``conv_layers`` the CNN whose output length is the
    frame count, ``channels`` the width of the channel mask (``encoder_embed_dim``)."""

    masker: Masker
    conv_layers: Tuple[Tuple[int, int, int], ...]
    channels: int

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """CNN output frames of each length in ``samples``."""
        return conv_output_lengths(torch.as_tensor(np.asarray(samples, dtype=np.int64)), self.conv_layers).numpy()

    def __call__(self, width: int, lengths: Sequence[int], rng: np.random.Generator) -> dict:
        """``{"mask_indices": B×T, "mask_channel_indices": B×T×C}`` (bool; None when that prob is 0) for a batch
        padded to ``width`` samples whose rows hold ``lengths`` samples: T is the CNN's output length of ``width``
        and frames at or past a row's own output length (the model's padding mask) are never masked; every row has
        the same masked count, as fairseq's dataset (``require_same_masks``)."""
        frames = int(self.frames(np.asarray([width]))[0])
        valid = np.minimum(self.frames(np.asarray(lengths)), frames)
        padding = np.arange(frames)[None, :] >= valid[:, None]
        cpu, m = torch.device("cpu"), self.masker
        time = m.time_mask(len(valid), frames, padding, cpu, rng) if m.mask_prob > 0 else None
        channel = None
        if m.mask_channel_prob > 0:
            channel = m.channel_mask(len(valid), self.channels, cpu, rng).expand(-1, frames, -1)
        return {"mask_indices": time, "mask_channel_indices": channel}
