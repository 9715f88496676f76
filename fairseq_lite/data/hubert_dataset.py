"""``HubertDataset``: audio with frame labels (k-means units) or sequence labels (fairseq's ``hubert_dataset.py``).

Audio comes from a ``{split}.tsv`` manifest through ``FileAudioDataset`` (reading, resampling, ``normalize``,
missing and corrupt files); each label set is a text file with one line per manifest entry, read lazily: only
the byte offsets of the lines are kept and an item seeks to its line (fairseq's ``store_labels=False``).

Where fairseq only warns, a label file whose line count differs from the manifest's, a frame-label line whose
length does not match its audio at ``label_rate`` (beyond fairseq's 0.1 s) and a label that is not in the
dictionary are errors naming the file and line. Batches are fairseq's: the audio is cropped to the shortest
clip (``random_crop`` picks where) or padded to the longest (``pad_audio``), both at most ``max_sample_size``,
and frame labels are cut to the same window. Sequence labels (a transcript per clip) are never cut: their
audio is always padded (fairseq crops it, PR #3998). Crops draw from a generator seeded by (seed, epoch, ids).
"""

from __future__ import annotations

import array
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from fairseq_lite.data.add_target_dataset import collate_tokens
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.raw_audio_dataset import FileAudioDataset
from fairseq_lite.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: How far (seconds) a frame-label line's duration may be from its audio's: fairseq's ``verify_label_lengths``.
LABEL_DURATION_TOLERANCE = 0.1


def scan_label_lines(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(byte offset of every line start plus the file's end, number of labels on each line) of a label file."""
    offsets, counts = array.array("q", [0]), array.array("q")
    try:
        with open(path, "rb") as f:
            for line in f:
                offsets.append(offsets[-1] + len(line))
                counts.append(len(line.split()))
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist: write one line of labels per manifest entry (examples/"
                        "hubert/simple_kmeans/dump_km_label.py, or scripts/make_labels.py for .ltr)") from None
    return np.frombuffer(offsets, dtype=np.int64), np.frombuffer(counts, dtype=np.int64)


class LabelFile:
    """The lines of one label file that belong to the kept manifest entries, read on demand.

    ``keep`` holds the 0-based manifest entries kept (their label lines, as fairseq's ``inds``), ``total`` the
    number of entries the manifest lists; the file must have exactly ``total`` lines. Per kept line only its
    byte range and its number of labels are stored.
    """

    def __init__(self, path: str, keep: np.ndarray, total: int, manifest_path: str):
        offsets, counts = scan_label_lines(path)
        if len(counts) != total:
            raise DataError(f"{path} has {len(counts)} lines but {manifest_path} lists {total} audio files: there "
                            "must be one label line per manifest entry, in the same order (regenerate the labels "
                            "from this manifest)")
        self.path = path
        self.dictionary_name = f"dict.{path.rsplit('.', 1)[-1]}.txt"  # beside it in the task's label_dir
        self.line_numbers = keep + 1
        self.ranges = np.stack([offsets[keep], offsets[keep + 1]], axis=1)
        self.lengths = counts[keep]

    def __len__(self) -> int:
        return len(self.lengths)

    def line(self, i: int) -> str:
        """The text of kept line ``i`` (seeked to, as fairseq's ``get_label``)."""
        start, end = self.ranges[i]
        with open(self.path, "rb") as f:
            f.seek(int(start))
            data = f.read(int(end - start))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{self.path}:{self.line_numbers[i]}: the label line is not UTF-8 text") from None

    def encode(self, i: int, dictionary: Dictionary) -> torch.Tensor:
        """Line ``i`` as dictionary indices; a label the dictionary lacks is an error, never a silent ``<unk>``."""
        text = self.line(i)
        ids = dictionary.encode_line(text)
        has_unk = bool((ids == dictionary.unk()).any())
        unknown = [label for label in text.split() if label not in dictionary] if has_unk else []
        if unknown:
            raise DataError(f"{self.path}:{self.line_numbers[i]}: label {unknown[0]!r} is not in "
                            f"{self.dictionary_name} ({len(dictionary) - dictionary.nspecial} labels): the dictionary "
                            "must list every label (for k-means labels write it from the k-means model with "
                            "examples/hubert/simple_kmeans/write_km_dict.py)")
        return ids.long()

    def check_durations(self, audio_sizes: np.ndarray, sample_rate: int, label_rate: float, where: Any) -> None:
        """Every line's labels must last as long as its audio at ``label_rate`` (within 0.1 s, fairseq's check,
        which only warns); ``where(i)`` names the manifest line of kept entry ``i``."""
        audio_seconds = audio_sizes / sample_rate
        label_seconds = self.lengths / label_rate
        bad = np.flatnonzero(np.abs(audio_seconds - label_seconds) > LABEL_DURATION_TOLERANCE)
        if len(bad):
            i = bad[0]
            raise DataError(
                f"{self.path}:{self.line_numbers[i]}: {self.lengths[i]} labels last {label_seconds[i]:.2f} s at "
                f"label_rate {label_rate:g}, but the audio ({where(i)}, {audio_sizes[i]} samples) lasts "
                f"{audio_seconds[i]:.2f} s ({len(bad)} of {len(self)} lines differ by more than "
                f"{LABEL_DURATION_TOLERANCE} s): check task.label_rate / model.label_rate (100 for MFCC labels, 50 "
                "for labels of HuBERT or wav2vec 2.0 features) or regenerate the labels from this manifest"
            )


def batch_audio_size(lengths: Sequence[int], pad_audio: bool, max_sample_size: int) -> int:
    """The batch's audio length: the longest clip (``pad_audio``) or the shortest, at most ``max_sample_size``."""
    return min(max(lengths) if pad_audio else min(lengths), max_sample_size)


def crop_starts(lengths: Sequence[int], audio_size: int, random_crop: bool, rng: np.random.Generator) -> np.ndarray:
    """Where each clip's window of ``audio_size`` samples starts: 0 for clips that fit or without
    ``random_crop`` (fairseq's ``crop_to_max_size``), otherwise uniform over every possible start."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    if random_crop:
        for i, length in enumerate(lengths):
            if length > audio_size:
                starts[i] = rng.integers(0, length - audio_size + 1)
    return starts


def frame_label_window(label_lengths: Sequence[int], audio_starts: Sequence[int], audio_size: int, label_rate: float,
                       sample_rate: int, pad_audio: bool) -> Tuple[List[int], int]:
    """(first label of each clip's window, labels per window) for audio windows of ``audio_size`` samples at
    ``audio_starts`` (fairseq's ``collater_frm_label``: samples × label_rate / sample_rate, rounded; when
    cropping, no longer than the shortest remaining label sequence, so every row is full)."""
    to_frames = label_rate / sample_rate
    frame_starts = [int(round(start * to_frames)) for start in audio_starts]
    frame_size = int(round(audio_size * to_frames))
    if not pad_audio:
        frame_size = min(frame_size, *(length - start for length, start in zip(label_lengths, frame_starts)))
    return frame_starts, frame_size


def collate_audio(sources: Sequence[torch.Tensor], audio_size: int, starts: Sequence[int]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B×audio_size waveforms, B×audio_size padding mask): each clip's window from its start, zero-padded."""
    collated = np.zeros((len(sources), audio_size), dtype=np.float32)
    padding_mask = np.ones((len(sources), audio_size), dtype=bool)
    for i, (source, start) in enumerate(zip(sources, starts)):
        window = source[start : start + audio_size].numpy()
        collated[i, : len(window)] = window
        padding_mask[i, : len(window)] = False
    return torch.from_numpy(collated), torch.from_numpy(padding_mask)


class HubertDataset(torch.utils.data.Dataset):
    """Audio of ``manifest_path`` with one label sequence per label file (fairseq's ``HubertDataset``).

    ``label_rates``: frames per second of each label set (one value for all), -1 for sequence labels.
    ``dictionaries``: one per label file. ``max_keep_sample_size`` / ``min_keep_sample_size`` drop manifest
    entries by length; ``max_sample_size`` bounds the batch's audio length. ``pad_audio`` pads instead of
    cropping to the shortest clip; sequence labels always pad. ``strict_sample_rate``, ``skip_invalid`` and
    ``seed`` are fairseq_lite's (see ``FileAudioDataset``).
    """

    def __init__(self, manifest_path: str, sample_rate: int, label_paths: Sequence[str],
                 label_rates: Union[float, Sequence[float]], dictionaries: Sequence[Dictionary],
                 max_keep_sample_size: Optional[int] = None, min_keep_sample_size: Optional[int] = None,
                 max_sample_size: Optional[int] = None, shuffle: bool = True, pad_audio: bool = False,
                 normalize: bool = False, random_crop: bool = False, single_target: bool = False,
                 strict_sample_rate: bool = False, skip_invalid: bool = False, seed: int = 1):
        rates = [float(label_rates)] * len(label_paths) if np.isscalar(label_rates) else [float(r) for r in label_rates]
        if len(rates) != len(label_paths) or len(dictionaries) != len(label_paths):
            raise ConfigError(f"{len(label_paths)} label files need as many label rates and dictionaries "
                              f"(got {len(rates)} and {len(dictionaries)})")
        if any(rate == 0 for rate in rates):
            raise ConfigError("task.label_rate must be the labels' frames per second (> 0), or -1 for sequence labels")
        sequence_labels = any(rate < 0 for rate in rates)
        if sequence_labels and max_sample_size is not None:
            raise ConfigError(f"task.max_sample_size={max_sample_size} would crop audio away from its transcript "
                              "(sequence labels, label_rate -1): remove it, and drop long utterances with "
                              "task.max_keep_size instead")
        self.audio = FileAudioDataset(manifest_path, sample_rate, min_sample_size=min_keep_sample_size,
                                      shuffle=shuffle, normalize=normalize, strict_sample_rate=strict_sample_rate,
                                      skip_invalid=skip_invalid, seed=seed, max_keep_size=max_keep_sample_size)
        self.sample_rate, self.label_rates, self.dictionaries = sample_rate, rates, list(dictionaries)
        self.max_sample_size = max_sample_size if max_sample_size is not None else sys.maxsize
        self.pad_audio = pad_audio or sequence_labels
        self.shuffle, self.random_crop, self.single_target = shuffle, random_crop, single_target
        self.seed, self.epoch = seed, 1
        self.labels = self._load_labels(label_paths)
        logger.info("pad_audio=%s, random_crop=%s, normalize=%s, max_sample_size=%s", self.pad_audio, random_crop,
                    normalize, max_sample_size)

    def _load_labels(self, label_paths: Sequence[str]) -> List[LabelFile]:
        """The label files (line offsets only), each checked against the manifest's sizes at its label rate."""
        manifest = self.audio.manifest
        total = len(manifest.sizes) + len(manifest.skipped_indices)
        keep = np.setdiff1d(np.arange(total, dtype=np.int64), manifest.skipped_indices)
        labels = [LabelFile(path, keep, total, manifest.path) for path in label_paths]
        for label_file, rate in zip(labels, self.label_rates):
            if rate > 0:
                label_file.check_durations(self.sizes, self.sample_rate, rate, manifest.where)
        return labels

    # -- sizes and order (fairseq's) --------------------------------------------------------------

    @property
    def manifest(self) -> Any:
        return self.audio.manifest

    @property
    def sizes(self) -> np.ndarray:
        return self.audio.sizes

    @property
    def skipped_indices(self) -> np.ndarray:
        return self.audio.skipped_indices

    def __len__(self) -> int:
        return len(self.sizes)

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        """Batch cost of each index: its length, or at most ``max_sample_size`` when the batch is cropped."""
        sizes = self.sizes[indices]
        return sizes if self.pad_audio else np.minimum(sizes, self.max_sample_size)

    def num_tokens(self, index: int) -> int:
        return int(self.num_tokens_vec(np.asarray([index]))[0])

    def size(self, index: int) -> int:
        return self.num_tokens(index)

    def ordered_indices(self) -> np.ndarray:
        """Longest first by manifest size, ties broken by numpy's global RNG (seeded by the task), as fairseq."""
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return np.lexsort((order, self.sizes))[::-1]

    def filter_indices_by_size(self, indices: np.ndarray, max_sizes: Any):
        """Nothing is dropped by size (fairseq's hubert_pretraining task keeps every index)."""
        return indices, np.zeros(0, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.audio.set_epoch(epoch)

    # -- items and batches ------------------------------------------------------------------------

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.audio[index]
        if item["source"] is not None:
            item["label_list"] = [f.encode(index, d) for f, d in zip(self.labels, self.dictionaries)]
        return item

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        """fairseq's batch of ``samples`` (see ``collate``), cropped where the seeded generator says; {} if empty."""
        samples = [s for s in samples if s["source"] is not None]
        if not samples:
            return {}
        lengths = [len(s["source"]) for s in samples]
        audio_size = batch_audio_size(lengths, self.pad_audio, self.max_sample_size)
        rng = np.random.default_rng([self.seed, self.epoch, *(s["id"] for s in samples)])
        return self.collate(samples, audio_size, crop_starts(lengths, audio_size, self.random_crop, rng))

    def collate(self, samples: List[Dict[str, Any]], audio_size: int, starts: Sequence[int]) -> Dict[str, Any]:
        """``{"id", "net_input": {"source", "padding_mask"}}`` plus ``target_list``, ``target_lengths_list`` and
        ``ntokens_list`` (or, with ``single_target``, ``target``, ``target_lengths``, ``ntokens``) for audio
        windows of ``audio_size`` samples from ``starts``."""
        source, padding_mask = collate_audio([s["source"] for s in samples], audio_size, starts)
        targets, lengths, ntokens = [], [], []
        for k, (rate, dictionary) in enumerate(zip(self.label_rates, self.dictionaries)):
            labels = [s["label_list"][k] for s in samples]
            if rate > 0:
                frame_starts, frame_size = frame_label_window([len(t) for t in labels], starts, audio_size, rate,
                                                              self.sample_rate, self.pad_audio)
                labels = [t[start : start + frame_size] for t, start in zip(labels, frame_starts)]
            lengths.append(torch.LongTensor([len(t) for t in labels]))
            ntokens.append(int(lengths[-1].sum()))
            targets.append(collate_tokens(labels, dictionary.pad()))
        batch = {"id": torch.LongTensor([s["id"] for s in samples]),
                 "net_input": {"source": source, "padding_mask": padding_mask}}
        if self.single_target:
            batch.update(target=targets[0], target_lengths=lengths[0], ntokens=ntokens[0])
        else:
            batch.update(target_list=targets, target_lengths_list=lengths, ntokens_list=ntokens)
        return batch
