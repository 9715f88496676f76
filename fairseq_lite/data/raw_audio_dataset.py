"""``FileAudioDataset``: raw waveforms listed in a manifest (fairseq's ``raw_audio_dataset.py``).

Items are ``{"id": index, "source": FloatTensor[T]}``; the collater crops every clip to the shortest
one (pretraining) or right-pads with a ``padding_mask`` (fine-tuning / ``enable_padding``), optionally
up to fixed bucket lengths (``num_batch_buckets``, static shapes for XLA). Random crops and
augmentation draw from generators seeded by (seed, epoch, ids), so results do not depend on the number
of DataLoader workers or on resuming. With ``mask_precompute`` (``task.precompute_mask_indices``) the collater
also draws the batch's ``mask_indices`` / ``mask_channel_indices`` from such a generator.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from fairseq_lite.data.audio import read_audio
from fairseq_lite.data.manifest import load_manifest
from fairseq_lite.errors import DataError
from fairseq_lite.modules.masking import PrecomputedMasking

logger = logging.getLogger(__name__)


@dataclass
class AudioAugmentation:
    """Waveform augmentation for training (all off by default; ``audio_pretraining``'s ``augment_*`` fields)."""

    noise_prob: float = 0.0  # probability of adding white noise ...
    snr_min_db: float = 5.0  # ... at an SNR drawn uniformly from [snr_min_db, snr_max_db]
    snr_max_db: float = 30.0
    shift_max_ms: float = 0.0  # circular time shift of up to ± this many milliseconds
    gain_max_db: float = 0.0  # gain drawn uniformly from ± this many dB

    @property
    def enabled(self) -> bool:
        return self.noise_prob > 0 or self.shift_max_ms > 0 or self.gain_max_db > 0

    def __call__(self, wav: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
        if self.shift_max_ms > 0:
            limit = int(self.shift_max_ms * sample_rate / 1000)
            wav = np.roll(wav, int(rng.integers(-limit, limit + 1)))
        if self.gain_max_db > 0:
            wav = wav * np.float32(10 ** (rng.uniform(-self.gain_max_db, self.gain_max_db) / 20))
        if self.noise_prob > 0 and rng.random() < self.noise_prob:
            snr = rng.uniform(self.snr_min_db, self.snr_max_db)
            power = float(np.mean(wav.astype(np.float64) ** 2)) or 1e-10
            noise = rng.standard_normal(len(wav)).astype(np.float32)
            wav = wav + noise * np.float32(np.sqrt(power / 10 ** (snr / 10)))
        return wav.astype(np.float32, copy=False)


def bucket_boundaries(sizes: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket lengths: unique lower percentiles of ``sizes`` at ``num_buckets`` equal steps (fairseq's ``get_buckets``)."""
    return np.unique(np.percentile(sizes, np.linspace(0, 100, num_buckets + 1), method="lower")[1:]).astype(np.int64)


class FileAudioDataset(torch.utils.data.Dataset):
    """Audio files from a ``{split}.tsv`` manifest (fairseq's ``FileAudioDataset``).

    Args mirror fairseq's: ``sample_rate``, ``max_sample_size`` (longer clips are randomly cropped),
    ``min_sample_size`` (shorter manifest entries are dropped and remembered in ``skipped_indices``),
    ``pad``, ``normalize`` (zero mean, unit variance per utterance), ``num_buckets``; and ours:
    ``strict_sample_rate`` (raise on another rate instead of resampling), ``skip_invalid`` (drop missing,
    corrupt or empty files, counted, instead of raising), ``augment``, ``seed``, ``max_keep_size`` (drop longer
    manifest entries, HuBERT's option), ``mask_precompute`` (masks drawn in the collater, fairseq's
    ``compute_mask_indices`` argument).
    """

    def __init__(
        self,
        manifest_path: str,
        sample_rate: int,
        max_sample_size: Optional[int] = None,
        min_sample_size: int = 0,
        shuffle: bool = True,
        pad: bool = False,
        normalize: bool = False,
        num_buckets: int = 0,
        strict_sample_rate: bool = False,
        skip_invalid: bool = False,
        augment: Optional[AudioAugmentation] = None,
        seed: int = 1,
        max_keep_size: Optional[int] = None,
        mask_precompute: Optional[PrecomputedMasking] = None,
    ):
        self.manifest = load_manifest(
            manifest_path, min_sample_size or 0, skip_missing=skip_invalid, on_skip=logger.warning,
            max_keep_size=max_keep_size,
        )
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size if max_sample_size is not None else sys.maxsize
        self.min_sample_size = min_sample_size or 0
        self.shuffle = shuffle
        self.pad = pad
        self.normalize = normalize
        self.strict_sample_rate = strict_sample_rate
        self.skip_invalid = skip_invalid
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.mask_precompute = mask_precompute
        self.epoch = 1
        self.bad_files = 0  # files skipped while reading, in this process
        self.sizes = self.manifest.sizes
        self.num_buckets = num_buckets
        self.buckets = None
        if num_buckets > 0:
            if not pad:
                raise DataError("task.num_batch_buckets needs padding: set task.enable_padding=true (or labels)")
            self.buckets = bucket_boundaries(np.minimum(self.sizes, self.max_sample_size), num_buckets)
            logger.info("%d bucket lengths for %s: %s", len(self.buckets), manifest_path, self.buckets.tolist())
        logger.info("loaded %d examples from %s, skipped %d (%.1f MB of manifest arrays)", len(self), manifest_path,
                    len(self.skipped_indices), self.manifest.nbytes / 1e6)

    # -- sizes and order -------------------------------------------------------------------------

    @property
    def skipped_indices(self) -> np.ndarray:
        """Manifest entries (0-based, after the header line) that were dropped; label lines skip the same."""
        return self.manifest.skipped_indices

    def __len__(self) -> int:
        return len(self.sizes)

    def _clipped(self, sizes: np.ndarray) -> np.ndarray:
        return np.minimum(sizes, self.max_sample_size)

    def _bucketed(self, sizes: np.ndarray) -> np.ndarray:
        clipped = self._clipped(sizes)
        return self.buckets[np.minimum(np.searchsorted(self.buckets, clipped), len(self.buckets) - 1)]

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        """Batch cost of each index: its padded length (bucket, or manifest size) or its cropped length."""
        sizes = self.sizes[indices]
        if self.buckets is not None:
            return self._bucketed(sizes)
        return sizes if self.pad else self._clipped(sizes)

    def num_tokens(self, index: int) -> int:
        return int(self.num_tokens_vec(np.asarray([index]))[0])

    def size(self, index: int) -> int:
        return self.num_tokens(index)

    def ordered_indices(self) -> np.ndarray:
        """Longest first, ties broken by numpy's global RNG (seeded by the task with seed + epoch)."""
        if not self.shuffle:
            return np.arange(len(self))
        return np.lexsort((np.random.permutation(len(self)), self._clipped(self.sizes)))[::-1]

    def filter_indices_by_size(self, indices: np.ndarray, max_sizes: Any):
        """The raw dataset drops nothing by size (fairseq's behaviour): long clips are cropped instead."""
        return indices, np.zeros(0, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- items -----------------------------------------------------------------------------------

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.manifest.full_path(index)
        try:
            wav = read_audio(path, self.sample_rate, strict=self.strict_sample_rate)
        except DataError as e:
            message = f"{self.manifest.where(index)}: {e}"
            if not self.skip_invalid:
                raise DataError(message + " (set task.skip_invalid_audio=true to skip bad files)") from None
            self.bad_files += 1
            logger.warning("skipping bad audio (%d so far in this process): %s", self.bad_files, message)
            return {"id": index, "source": None}
        if self.augment is not None:
            wav = self.augment(wav, np.random.default_rng([self.seed, self.epoch, index]), self.sample_rate)
        if self.normalize:  # fairseq's layer_norm over the whole waveform (biased variance, eps 1e-5)
            wav = ((wav - wav.mean()) / np.sqrt(wav.var() + 1e-5)).astype(np.float32)
        return {"id": index, "source": torch.from_numpy(wav)}

    # -- batches ---------------------------------------------------------------------------------

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Crop/pad the batch into ``{"id", "net_input": {"source", "padding_mask"?, "mask_indices"?,
        "mask_channel_indices"?}}``; ``{}`` if empty."""
        samples = [s for s in samples if s["source"] is not None]
        if not samples:
            return {}
        ids = [s["id"] for s in samples]
        sources = [s["source"] for s in samples]
        lengths = [len(s) for s in sources]
        target = min(max(lengths) if self.pad else min(lengths), self.max_sample_size)
        width = target
        if self.buckets is not None:  # static shapes: always exactly the bucket length
            width = int(self._bucketed(self.sizes[ids]).max())
            target = min(target, width)
        rng = np.random.default_rng([self.seed, self.epoch, *ids])
        # assembled in numpy: torch's intra-op threads make these small copies slow in a busy process
        collated = np.zeros((len(sources), width), dtype=np.float32)
        padding_mask = np.ones((len(sources), width), dtype=bool) if self.pad else None
        kept = []
        for i, source in enumerate(sources):
            if len(source) > target:
                start = int(rng.integers(0, len(source) - target + 1))
                source = source[start : start + target]
            collated[i, : len(source)] = source.numpy()
            kept.append(len(source))
            if padding_mask is not None:
                padding_mask[i, : len(source)] = False
        net_input = {"source": torch.from_numpy(collated)}
        if padding_mask is not None:
            net_input["padding_mask"] = torch.from_numpy(padding_mask)
        batch = {"id": torch.LongTensor(ids), "net_input": net_input}
        if self.mask_precompute is not None:  # its own stream: crops draw the same with or without it
            mask_rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, *ids], spawn_key=(1,)))
            net_input.update({k: v for k, v in self.mask_precompute(width, kept, mask_rng).items() if v is not None})
            if "mask_indices" in net_input:  # counted on the host, as fairseq: the criterion reads no device value
                batch["sample_size"] = int(net_input["mask_indices"].sum())
        return batch
