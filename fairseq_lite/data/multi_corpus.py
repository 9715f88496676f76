"""Several corpora in one run (fairseq's ``task.multi_corpus_keys`` / ``multi_corpus_sampling_weights``).

A split is written ``key:file,key:file`` (``eng:train,fra:train``; ``dataset.gen_subset="eng:dev"``): ``{data}/{file}.tsv``
(and ``{data}/{file}.{labels}``) is the corpus ``key``, and a batch of it carries ``net_input["corpus_key"]`` = the
index of ``key`` in ``multi_corpus_keys``, which picks the model's per-language adapter (MMS). Unlike fairseq, whose
``MultiCorpusDataset`` is built without ``batch_sample`` and so mixes languages in a batch and then applies the first
sample's adapter to all of it, every batch here holds one corpus; the training split draws the corpus of each batch
with the sampling weights (fairseq compares their sum to 1 exactly; here within ``WEIGHT_TOLERANCE``).

fairseq has no temperature option for audio: XLS-R's p ∝ n^0.5 upsampling was done by repeating manifest lines
(fairseq#2997). ``temperature_weights`` computes those weights from the manifests' durations instead
(``examples/wav2vec/multi_corpus_weights.py``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from fairseq_lite.data.manifest import load_manifest
from fairseq_lite.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: How far the sampling weights may sum away from 1.
WEIGHT_TOLERANCE = 1e-6


class CorpusSplit(NamedTuple):
    """One ``key:file`` entry of a split: the corpus key, its index in ``multi_corpus_keys``, the manifest name."""

    key: str
    corpus_key: int
    name: str


def parse_corpus_keys(text: str) -> List[str]:
    """``task.multi_corpus_keys`` (``"eng,fra,deu"``) as a list; empty or repeated keys are a ConfigError."""
    keys = [k.strip() for k in str(text).split(",")]
    if not all(keys):
        raise ConfigError(f"task.multi_corpus_keys={text!r} has an empty key: write comma-separated names, e.g. eng,fra")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"task.multi_corpus_keys={text!r} repeats {', '.join(repeated)}: name each corpus once")
    return keys


def parse_sampling_weights(text: Optional[str], keys: Sequence[str]) -> Optional[List[float]]:
    """``task.multi_corpus_sampling_weights`` as floats, one per key, ≥ 0, summing to 1 (± WEIGHT_TOLERANCE)."""
    if text is None:
        return None
    where = f"task.multi_corpus_sampling_weights={text!r}"
    try:
        weights = [float(w) for w in str(text).split(",")]
    except ValueError:
        raise ConfigError(f"{where} is not a comma-separated list of numbers") from None
    if len(weights) != len(keys):
        raise ConfigError(f"{where} has {len(weights)} weights for the {len(keys)} keys of task.multi_corpus_keys "
                          f"({','.join(keys)}): give one weight per key, in the same order")
    if any(not np.isfinite(w) or w < 0 for w in weights):
        raise ConfigError(f"{where} has a negative or non-finite weight: weights are probabilities")
    total = sum(weights)
    if abs(total - 1) > WEIGHT_TOLERANCE:
        fixed = format_weights(np.asarray(weights) / total) if total > 0 else "weights that sum to 1"
        raise ConfigError(f"{where} sums to {total:.9g}, not 1 (±{WEIGHT_TOLERANCE:g}): use e.g. {fixed}")
    return weights


def names_corpora(data: str, split: str) -> bool:
    """Whether ``split`` is written ``key:file,...`` rather than naming a manifest ``{data}/{split}.tsv`` whose name
    holds a colon."""
    return ":" in split and not os.path.exists(os.path.join(data, f"{split}.tsv"))


def split_keys(split: str) -> Set[str]:
    """The corpus keys the ``key:file`` entries of ``split`` name (entries without a key left out)."""
    return {entry.partition(":")[0] for entry in split.split(",") if ":" in entry}


def parse_split(split: str, keys: Sequence[str]) -> List[CorpusSplit]:
    """The ``key:file,key:file`` entries of ``split``; an entry without a key, or with a key that is not in
    ``keys`` (``task.multi_corpus_keys``), or a key given twice is a ConfigError."""
    entries = []
    for entry in split.split(","):
        key, sep, name = (part.strip() for part in entry.partition(":"))
        if not sep or not key or not name:
            raise ConfigError(f"split {split!r}: entry {entry.strip()!r} has no corpus key; with task.multi_corpus_keys "
                              f"set, write splits as key:file,key:file, e.g. {keys[0]}:{entry.strip() or 'train'}")
        if key not in keys:
            raise ConfigError(f"split {split!r}: corpus key {key!r} is not in task.multi_corpus_keys={','.join(keys)}: "
                              "add it there (with its sampling weight) or fix the split name")
        if any(e.key == key for e in entries):
            raise ConfigError(f"split {split!r} names corpus {key!r} twice: list each corpus once")
        entries.append(CorpusSplit(key, list(keys).index(key), name))
    return entries


def format_weights(weights: Sequence[float]) -> str:
    """Weights as the comma-separated string of ``task.multi_corpus_sampling_weights`` (10 significant digits:
    the sum stays within WEIGHT_TOLERANCE of 1 for any realistic number of corpora)."""
    return ",".join(f"{w:.10g}" for w in weights)


def temperature_weights(sizes: Sequence[float], alpha: float = 0.5) -> np.ndarray:
    """p_i ∝ n_i^alpha, normalised (XLS-R/XLSR-53's language sampling with alpha = 0.5; 1 = proportional to the
    data, 0 = uniform). ``sizes`` are the corpora's amounts of data (hours); each must be > 0."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) == 0 or not (sizes > 0).all():
        raise DataError(f"temperature weights need a positive amount of data for every corpus, got {sizes.tolist()}")
    scaled = sizes ** float(alpha)
    return scaled / scaled.sum()


class CorpusWeight(NamedTuple):
    """One corpus of ``temperature_table``: its amount of data, its share of it and its sampling weight."""

    key: str
    manifest: str
    utterances: int
    hours: float
    share: float
    weight: float


def temperature_table(data: str, split: str, alpha: float = 0.5, sample_rate: int = 16_000) -> List[CorpusWeight]:
    """The corpora of ``split`` (``key:file,...``, as ``dataset.train_subset``) with their hours, read from the frame
    counts of ``{data}/{file}.tsv`` (the audio is not opened), and their ``temperature_weights``."""
    keys = [entry.partition(":")[0].strip() for entry in split.split(",")]
    entries = parse_split(split, keys)
    paths = [os.path.join(data, f"{e.name}.tsv") for e in entries]
    sizes = [load_manifest(path, check_files=False).sizes for path in paths]
    hours = np.array([np.sum(s, dtype=np.float64) / sample_rate / 3600 for s in sizes])
    empty = [p for p, h in zip(paths, hours) if h <= 0]
    if empty:
        raise DataError(f"manifest {empty[0]} lists no audio: every corpus needs data to be weighed")
    weights = temperature_weights(hours, alpha)
    return [CorpusWeight(e.key, p, len(s), float(h), float(h / hours.sum()), float(w))
            for e, p, s, h, w in zip(entries, paths, sizes, hours, weights)]


class _CorpusManifests:
    """The manifests of a MultiCorpusDataset seen as one, by global index: ``full_path``, which infer.py reads
    from ``dataset.manifest`` to name the audio of each result."""

    def __init__(self, owner: "MultiCorpusDataset"):
        self.owner = owner

    def full_path(self, index: int) -> str:
        position, local = self.owner.locate(index)
        audio = self.owner.datasets[position]
        return getattr(audio, "dataset", audio).manifest.full_path(local)


class MultiCorpusDataset(torch.utils.data.Dataset):
    """The corpora of a ``key:file,...`` split, indexed one after the other, batched one corpus per batch.

    Args:
        datasets: one audio dataset (FileAudioDataset, or AddTargetDataset over one) per entry of the split.
        corpus_keys: for each, its index in ``task.multi_corpus_keys``: the ``net_input["corpus_key"]`` of its batches.
        names: for each, the ``key:file`` text, for messages.
        weights: per-batch sampling weights of the corpora (the training split), or None: every batch of every
            corpus once per epoch (validation, inference).
    """

    def __init__(self, datasets: Sequence[Any], corpus_keys: Sequence[int], names: Sequence[str],
                 weights: Optional[Sequence[float]] = None):
        self.datasets = list(datasets)
        self.corpus_keys = list(corpus_keys)
        self.names = list(names)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in self.datasets])]).astype(np.int64)
        self.manifest = _CorpusManifests(self)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> Tuple[int, int]:
        """(position of the corpus in the split, index inside that corpus) of a global index."""
        position = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside the {len(self)} examples of {','.join(self.names)}")
        return position, int(index - self.offsets[position])

    def __getitem__(self, index: int) -> Dict[str, Any]:
        position, local = self.locate(index)
        item = self.datasets[position][local]
        item["corpus"] = position
        return item

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        positions = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.zeros(len(indices), dtype=np.int64)
        for p in np.unique(positions):
            sel = positions == p
            out[sel] = self.datasets[p].num_tokens_vec(indices[sel] - self.offsets[p])
        return out

    def num_tokens(self, index: int) -> int:
        return int(self.num_tokens_vec(np.asarray([index]))[0])

    def size(self, index: int) -> Any:
        position, local = self.locate(index)
        return self.datasets[position].size(local)

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        """The corpus's own collater, then global ids and ``net_input["corpus_key"]`` (B, long); ``{}`` if empty."""
        if not samples:
            return {}
        positions = {s["corpus"] for s in samples}
        if len(positions) != 1:
            raise DataError(f"a batch mixes corpora {sorted(self.names[p] for p in positions)}: batches must hold "
                            "one corpus (build them with the task's get_batch_iterator)")
        position = positions.pop()
        collated = self.datasets[position].collater(samples)
        if collated:
            collated["id"] = collated["id"] + int(self.offsets[position])
            collated["net_input"]["corpus_key"] = torch.full_like(collated["id"], self.corpus_keys[position])
        return collated

    def batches(self, epoch: int, seed: int, batch_corpus: Callable[[Any], List[np.ndarray]]) -> List[np.ndarray]:
        """The epoch's batches (global indices). ``batch_corpus(dataset)`` batches one corpus (local indices).

        Without weights: every corpus's batches, corpus after corpus. With weights: as many batches as the corpora
        of non-zero weight have together; the corpus of each is drawn with the weights, and each corpus hands out
        its batches in a random order, starting a new round when it runs out (a small corpus is repeated, a large
        one subsampled). Everything is drawn from (seed, epoch), so the batches of an epoch are the same on every
        rank and again after a resume.
        """
        per_corpus = []
        for position, dataset in enumerate(self.datasets):
            skip = self.weights is not None and self.weights[position] == 0
            per_corpus.append([] if skip else [b + self.offsets[position] for b in batch_corpus(dataset)])
        if self.weights is None:
            return [b for batches in per_corpus for b in batches]
        for position, batches in enumerate(per_corpus):
            if self.weights[position] > 0 and not batches:
                raise DataError(f"corpus {self.names[position]} yields no batch (every example filtered out): check "
                                "its manifest, dataset.max_tokens and task.max_sample_size, or give it weight 0")
        rng = np.random.default_rng([seed, epoch])
        picks = rng.choice(len(per_corpus), size=sum(len(b) for b in per_corpus), p=self.weights / self.weights.sum())
        out: List[np.ndarray] = [np.zeros(0, np.int64)] * len(picks)
        for position, batches in enumerate(per_corpus):
            slots = np.flatnonzero(picks == position)
            rounds = -(-len(slots) // max(len(batches), 1))
            order = np.concatenate([rng.permutation(len(batches)) for _ in range(rounds)] or [np.zeros(0, np.int64)])
            for slot, i in zip(slots.tolist(), order.tolist()):
                out[slot] = batches[i]
        logger.info("epoch %d: batches per corpus %s", epoch,
                    ", ".join(f"{n} {int((picks == p).sum())}" for p, n in enumerate(self.names)))
        return out
