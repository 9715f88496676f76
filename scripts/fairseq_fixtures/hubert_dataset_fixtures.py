"""Genuine fairseq 0.12.2 batches of HuBERT's dataset (``fairseq/data/audio/hubert_dataset.py``, built by its
``hubert_pretraining`` task) on a tiny corpus.

Run with the genuine-fairseq venv only (never imported by fairseq_lite)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/hubert_dataset_fixtures.py

The corpus: four 8 kHz clips of 400–640 samples, two frame-label sets at 100 Hz (``km``, K=6, and ``km2``, K=3;
one line a label short of its audio, so cropping has to shorten the label window) and ``ltr`` transcripts, each
with its ``dict.*.txt``. Written to ``tests/fixtures/fairseq/hubert_dataset/``: the audio and label files,
``meta.json`` (versions, the manifest's names and sizes, each case's task options, ids and ``ntokens``) and
``outputs.npz`` with, per case, ``{case}_source`` (int16 PCM values, float32 when normalised),
``{case}_unpadded`` (per row, the samples before fairseq's padding mask turns true), ``{case}_target_{k}`` and
``{case}_lengths_{k}`` (``k`` = label set), and for random crops ``{case}_starts``, the crop starts fairseq drew:

- ``pad``: ``pad_audio`` with ``random_crop`` false, ``max_sample_size`` 600 (long clips cut from their start,
  short ones padded);
- ``crop`` and ``crop_tail``: fairseq's pretraining batches (cropped to the shortest clip at random places under
  ``np.random.seed``), on ids 0–3 and 1–3;
- ``finetune``: ``fine_tuning`` + ``single_target`` on ``ltr`` with ``pad_audio`` true (what fairseq PR #3998
  makes of fine-tuning batches; fairseq_lite always pads sequence labels), ``normalize``;
- ``ordered_indices_{seed}`` under ``data_utils.numpy_seed(seed)`` (seeds 0 and 3) and ``num_tokens_pad`` /
  ``num_tokens_crop``, each index's batching size with and without ``pad_audio`` (``max_sample_size`` 600).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import generator_main, recording, save_npz, tone, write_manifest, write_meta  # noqa: E402

LENGTHS = [400, 640, 520, 640]  # two of a length: ordered_indices breaks the tie with its seeded permutation
LABEL_COUNTS = [5, 8, 7, 6]  # 100 Hz; the last clip lasts 8 frames: two labels short, within fairseq's 0.1 s
LABEL_SETS = {"km": 6, "km2": 3}
TRANSCRIPTS = ["A B", "B A C", "C A B A", "A C"]
SAMPLE_RATE, LABEL_RATE, MAX_SAMPLE_SIZE = 8_000, 100.0, 600
ORDER_SEEDS = (0, 3)  # they break the tie of clips 1 and 3 differently
#: (case, task options, batch ids, np.random seed before the collater or None)
CASES = [
    ("pad", dict(pad_audio=True, random_crop=False, max_sample_size=MAX_SAMPLE_SIZE), [0, 1, 2, 3], None),
    ("crop", dict(pad_audio=False, random_crop=True), [0, 1, 2, 3], 3),
    ("crop_tail", dict(pad_audio=False, random_crop=True), [1, 2, 3], 5),
    ("finetune", dict(fine_tuning=True, single_target=True, labels=["ltr"], label_rate=-1.0, pad_audio=True,
                      normalize=True), [0, 1, 2, 3], None),
]


def write_audio(folder: str) -> List[str]:
    """``u{i}.wav`` (16-bit PCM at ``SAMPLE_RATE``) of ``LENGTHS`` samples and ``train.tsv``; returns the names."""
    import soundfile as sf

    rng = np.random.RandomState(2)
    names = [f"u{i}.wav" for i in range(len(LENGTHS))]
    for i, (name, n) in enumerate(zip(names, LENGTHS)):
        sf.write(os.path.join(folder, name), tone(n, 180 + 50 * i, rng), SAMPLE_RATE, subtype="PCM_16")
    write_manifest(folder, names, LENGTHS, ["train"])
    return names


def write_labels(folder: str) -> None:
    """``train.{km,km2,ltr}`` and their ``dict.*.txt`` (``i 1`` lines; letters with their counts)."""
    rng = np.random.RandomState(4)
    for label, k in LABEL_SETS.items():
        lines = [" ".join(str(u) for u in rng.randint(0, k, n)) for n in LABEL_COUNTS]
        with open(os.path.join(folder, f"train.{label}"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
        with open(os.path.join(folder, f"dict.{label}.txt"), "w") as f:
            f.write("".join(f"{i} 1\n" for i in range(k)))
    letters = [" ".join(text.replace(" ", "|")) + " |" for text in TRANSCRIPTS]
    with open(os.path.join(folder, "train.ltr"), "w") as f:
        f.write("".join(line + "\n" for line in letters))
    with open(os.path.join(folder, "dict.ltr.txt"), "w") as f:
        f.write("".join(f"{c} {n}\n" for c, n in (("A", 6), ("|", 4), ("B", 3), ("C", 3))))


def genuine_dataset(folder: str, options: Dict[str, Any]) -> Any:
    """fairseq's HubertPretrainingTask on ``folder`` with ``options``, and its train HubertDataset."""
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

    settings = dict(data=folder, labels=list(LABEL_SETS), label_rate=LABEL_RATE, sample_rate=SAMPLE_RATE)
    task = HubertPretrainingTask.setup_task(HubertPretrainingConfig(**{**settings, **options}))
    task.load_dataset("train")
    return task.datasets["train"]


def record_case(folder: str, case: str, options: Dict[str, Any], ids: List[int], seed: Any,
                arrays: Dict[str, Any]) -> Dict[str, Any]:
    """Collate ``ids`` with fairseq's dataset into ``arrays``; returns the case's meta entry."""
    dataset = genuine_dataset(folder, options)
    samples = [dataset[i] for i in ids]
    if seed is not None:
        np.random.seed(seed)
    with recording(dataset, "crop_to_max_size") as crops:
        batch = dataset.collater(samples)
    source, padding_mask = batch["net_input"]["source"], batch["net_input"]["padding_mask"].numpy()
    unpadded = (~padding_mask).sum(axis=1)
    assert (padding_mask == (np.arange(source.shape[1]) >= unpadded[:, None])).all(), "padding is not a suffix"
    arrays[f"{case}_unpadded"] = unpadded
    pcm = source.numpy() * 32768
    exact = not options.get("normalize") and (pcm == np.round(pcm)).all()
    arrays[f"{case}_source"] = pcm.astype(np.int16) if exact else source
    if options.get("random_crop"):  # crop_to_max_size runs, in order, for each clip longer than the batch
        starts = iter(start for _, start in crops)
        arrays[f"{case}_starts"] = np.array([next(starts) if len(s["source"]) > source.shape[1] else 0
                                             for s in samples], dtype=np.int64)
    if options.get("single_target"):
        targets, lengths, ntokens = [batch["target"]], [batch["target_lengths"]], [batch["ntokens"]]
    else:
        targets, lengths, ntokens = batch["target_list"], batch["target_lengths_list"], batch["ntokens_list"]
    for k, (target, length) in enumerate(zip(targets, lengths)):
        arrays[f"{case}_target_{k}"], arrays[f"{case}_lengths_{k}"] = target, length
    return {"options": options, "ids": ids, "ntokens": [int(n) for n in ntokens]}


def record_sizes(folder: str, arrays: Dict[str, Any]) -> None:
    """fairseq's ``ordered_indices`` (numpy seeded with each of ``ORDER_SEEDS``) and batching sizes with and without
    ``pad_audio``."""
    from fairseq.data import data_utils

    for name, pad in (("pad", True), ("crop", False)):
        dataset = genuine_dataset(folder, dict(pad_audio=pad, max_sample_size=MAX_SAMPLE_SIZE))
        arrays[f"num_tokens_{name}"] = np.array([dataset.num_tokens(i) for i in range(len(dataset))])
    for seed in ORDER_SEEDS:
        with data_utils.numpy_seed(seed):
            arrays[f"ordered_indices_{seed}"] = np.array(dataset.ordered_indices(), dtype=np.int64)


def generate(output_dir: str) -> None:
    folder = os.path.join(output_dir, "hubert_dataset")
    with tempfile.TemporaryDirectory() as work:
        names = write_audio(work)
        write_labels(work)
        arrays: Dict[str, Any] = {}
        cases = {case: record_case(work, case, options, ids, seed, arrays) for case, options, ids, seed in CASES}
        record_sizes(work, arrays)
        os.makedirs(folder, exist_ok=True)
        for name in names + [f"train.{label}" for label in [*LABEL_SETS, "ltr"]]:
            shutil.copyfile(os.path.join(work, name), os.path.join(folder, name))
        for label in [*LABEL_SETS, "ltr"]:
            shutil.copyfile(os.path.join(work, f"dict.{label}.txt"), os.path.join(folder, f"dict.{label}.txt"))
    save_npz(os.path.join(folder, "outputs.npz"), arrays)
    write_meta(folder, {"names": names, "sizes": LENGTHS, "labels": list(LABEL_SETS), "label_rate": LABEL_RATE,
                        "sample_rate": SAMPLE_RATE, "cases": cases, "outputs": sorted(arrays)})


if __name__ == "__main__":
    generator_main(__doc__.splitlines()[0], generate)
