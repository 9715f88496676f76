"""The sharded files of HuBERT's label pipeline (fairseq's examples/hubert/simple_kmeans/feature_utils.py layout).

A manifest's utterances are cut into ``nshard`` contiguous shards as fairseq cuts them. Shard ``rank`` of
``split`` is ``{feat_dir}/{split}_{rank}_{nshard}.npy`` (every utterance's T×D float32 frames, concatenated along
time, one plain .npy) with ``{split}_{rank}_{nshard}.len`` (one frame count per utterance, in manifest order),
and its k-means labels are ``{lab_dir}/{split}_{rank}_{nshard}.km`` (one line of space-separated ints per
utterance). Each file is written through a temporary file and renamed when complete (fairseq deletes the old
.npy first and appends to it in place).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from fairseq_lite.data.audio import read_audio
from fairseq_lite.data.manifest import load_manifest, read_utf8_lines
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.file_io import AtomicOutputs

logger = logging.getLogger(__name__)

#: Bytes reserved for the .npy header, so that the shape can be written once the frame count is known.
NPY_HEADER_BYTES = 128
NPY_MAGIC = b"\x93NUMPY\x01\x00"


def shard_range(total: int, nshard: int, rank: int, source: str) -> Tuple[int, int]:
    """[start, end) of shard ``rank`` of ``nshard`` over ``total`` items, fairseq's ``get_shard_range`` split
    (``round(total / nshard * rank)``); an empty shard is an error naming ``source``."""
    if nshard < 1 or not 0 <= rank < nshard:
        raise ConfigError(f"rank {rank} of nshard {nshard}: nshard must be ≥ 1 and rank in 0..nshard-1")
    start = round(total / nshard * rank)
    end = round(total / nshard * (rank + 1))
    if start >= end:
        raise DataError(f"{source}: shard {rank} of {nshard} is empty ({total} utterances): use nshard ≤ {total}")
    return start, end


def shard_path(folder: str, split: str, rank: int, nshard: int, ext: str) -> str:
    """``{folder}/{split}_{rank}_{nshard}.{ext}``, fairseq's shard file name."""
    return os.path.join(folder, f"{split}_{rank}_{nshard}.{ext}")


@dataclass
class ShardUtterance:
    """One manifest entry of a shard: the audio path, the manifest's sample count and ``tsv:line`` for messages."""

    path: str
    num_samples: int
    where: str


def manifest_shard(tsv_path: str, nshard: int, rank: int) -> List[ShardUtterance]:
    """The utterances of shard ``rank`` of ``{split}.tsv`` (fairseq's ``get_path_iterator``); a malformed line is
    a DataError naming the manifest and the line."""
    manifest = load_manifest(tsv_path, check_files=False)
    start, end = shard_range(len(manifest.names), nshard, rank, tsv_path)
    return [ShardUtterance(manifest.full_path(i), int(manifest.sizes[i]), manifest.where(i))
            for i in range(start, end)]


def npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 .npy header for a rows × dim little-endian float32 array, padded to NPY_HEADER_BYTES."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    text = text.ljust(NPY_HEADER_BYTES - len(NPY_MAGIC) - 3) + "\n"
    return NPY_MAGIC + struct.pack("<H", len(text)) + text.encode("latin1")


class FeatureShardWriter:
    """Writes one shard's ``.npy`` and ``.len`` utterance by utterance; leaving the ``with`` block normally puts
    both in place together, an exception leaves the earlier pair (if any) untouched."""

    def __init__(self, feat_dir: str, split: str, rank: int, nshard: int):
        self.npy_path = shard_path(feat_dir, split, rank, nshard, "npy")
        self.len_path = shard_path(feat_dir, split, rank, nshard, "len")
        self.rows = 0
        self.dim: Optional[int] = None
        self._outputs = AtomicOutputs()
        self._npy: Optional[IO[bytes]] = None
        self._len: Optional[IO[str]] = None

    def __enter__(self) -> "FeatureShardWriter":
        self._npy = self._outputs.open(self.npy_path, "wb")
        self._npy.write(b"\0" * NPY_HEADER_BYTES)
        self._len = self._outputs.open(self.len_path, "w", encoding="utf-8")
        return self

    def append(self, features: np.ndarray) -> None:
        """Add one utterance's T×D frames (stored as float32)."""
        features = np.ascontiguousarray(features, dtype="<f4")
        if features.ndim != 2 or (self.dim is not None and features.shape[1] != self.dim):
            raise ValueError(f"expected T×{self.dim or 'D'} features, got shape {features.shape}")
        self.dim = features.shape[1]
        self._npy.write(features.tobytes())
        self._len.write(f"{len(features)}\n")
        self.rows += len(features)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._npy.seek(0)
            self._npy.write(npy_header(self.rows, self.dim or 0))
            self._outputs.commit()
        else:
            self._outputs.discard()
        return False


def read_shard_lengths(len_path: str) -> np.ndarray:
    """The frame counts of a ``.len`` file; a line that is not a count is a DataError naming the file and line."""
    lengths = []
    for n, line in enumerate(read_utf8_lines(len_path, "feature length file"), start=1):
        if not line.strip().isdigit():
            raise DataError(f"{len_path}:{n}: expected a frame count, got {line!r}; dump the shard again")
        lengths.append(int(line))
    if not lengths:
        raise DataError(f"{len_path} is empty: dump the shard again")
    return np.asarray(lengths, dtype=np.int64)


def read_feature_shard(feat_dir: str, split: str, rank: int, nshard: int) -> Tuple[np.ndarray, np.ndarray]:
    """(frames N×D memory-mapped, per-utterance frame counts) of one shard; a missing or unreadable file, or a
    ``.len`` whose counts do not add up to the ``.npy``'s frames, is a DataError naming the files."""
    npy_path = shard_path(feat_dir, split, rank, nshard, "npy")
    len_path = shard_path(feat_dir, split, rank, nshard, "len")
    lengths = read_shard_lengths(len_path)
    try:
        features = np.load(npy_path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"feature file {npy_path} does not exist (its {len_path} does): dump the shard again") from None
    except ValueError as e:
        raise DataError(f"{npy_path} is not a feature .npy ({e}): dump the shard again") from None
    if features.ndim != 2:
        raise DataError(f"{npy_path} holds an array of shape {features.shape}, expected frames × dim")
    if int(lengths.sum()) != features.shape[0]:
        raise DataError(f"{len_path}: its {len(lengths)} frame counts add up to {int(lengths.sum())}, but {npy_path} "
                        f"holds {features.shape[0]} frames: the two files come from different runs; dump the shard "
                        "again")
    return features, lengths


def split_utterances(features: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
    """Each utterance's frames of a shard, in order."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for start, end in zip(offsets[:-1], offsets[1:]):
        yield features[start:end]


def sample_shard_features(feat_dir: str, split: str, nshard: int, percent: float,
                          rng: np.random.RandomState) -> np.ndarray:
    """The k-means training frames (fairseq's learn_kmeans ``load_feature``): every frame of every shard, or with
    ``percent`` in (0, 1] the frames of ⌈utterances × percent⌉ utterances drawn per shard without replacement."""
    if percent > 1.0:
        raise ConfigError(f"--percent {percent}: give a fraction in (0, 1], or -1 for all the data")
    parts = []
    for rank in range(nshard):
        features, lengths = read_feature_shard(feat_dir, split, rank, nshard)
        if percent < 0:
            parts.append(features)
            continue
        chosen = rng.choice(len(lengths), int(np.ceil(len(lengths) * percent)), replace=False)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        parts.append(np.concatenate([features[offsets[i]: offsets[i] + lengths[i]] for i in chosen], axis=0))
    return np.concatenate(parts, axis=0)


def write_label_shard(lab_dir: str, split: str, rank: int, nshard: int, labels: Iterable[np.ndarray]) -> str:
    """``{lab_dir}/{split}_{rank}_{nshard}.km``: one line of space-separated labels per utterance; returns its path."""
    path = shard_path(lab_dir, split, rank, nshard, "km")
    with AtomicOutputs() as outputs:
        f = outputs.open(path, "w", encoding="utf-8")
        for utterance in labels:
            f.write(" ".join(map(str, utterance.tolist())) + "\n")
    return path


def merge_label_shards(lab_dir: str, split: str, nshard: int) -> str:
    """``{lab_dir}/{split}.km``: the shards' lines in rank order (the README's ``cat`` loop); a missing shard is
    a DataError naming it. Returns the path."""
    shards = [shard_path(lab_dir, split, rank, nshard, "km") for rank in range(nshard)]
    for path in shards:
        if not os.path.isfile(path):
            raise DataError(f"label shard {path} does not exist: run dump_km_label.py for every rank 0..{nshard - 1}")
    merged = os.path.join(lab_dir, f"{split}.km")
    with AtomicOutputs() as outputs:
        out = outputs.open(merged, "wb")
        for path in shards:
            with open(path, "rb") as f:
                data = f.read()
            out.write(data if not data or data.endswith(b"\n") else data + b"\n")
    return merged


def read_shard_audio(utterance: ShardUtterance, sample_rate: int, min_samples: int) -> np.ndarray:
    """The mono float32 waveform of a shard utterance at ``sample_rate``; a file shorter than ``min_samples``
    (no feature frame) is a DataError naming the manifest line. Like fairseq, a length that differs from the
    manifest's by more than 160 samples is logged."""
    wav = read_audio(utterance.path, sample_rate)
    if abs(len(wav) - utterance.num_samples) > 160:
        logger.warning("%s: the manifest says %d samples, %s holds %d", utterance.where, utterance.num_samples,
                       utterance.path, len(wav))
    if len(wav) < min_samples:
        raise DataError(f"{utterance.where}: {utterance.path} has {len(wav)} samples, fewer than the {min_samples} "
                        "that make one feature frame: remove it from the manifest")
    return wav


def dump_feature_shard(tsv_path: str, split: str, nshard: int, rank: int, feat_dir: str,
                       featurize: Callable[[ShardUtterance], np.ndarray],
                       progress: Callable[[Iterable], Iterable] = lambda items: items) -> Tuple[int, int]:
    """fairseq's ``dump_feature``: ``featurize`` every utterance of shard ``rank`` of ``tsv_path`` into
    ``{feat_dir}/{split}_{rank}_{nshard}.npy`` / ``.len``; returns (utterances, frames)."""
    utterances = manifest_shard(tsv_path, nshard, rank)
    with FeatureShardWriter(feat_dir, split, rank, nshard) as writer:
        for utterance in progress(utterances):
            writer.append(featurize(utterance))
    logger.info("%s: wrote %d utterances, %d frames of dim %d to %s", tsv_path, len(utterances), writer.rows,
                writer.dim, writer.npy_path)
    return len(utterances), writer.rows
