#!/usr/bin/env python
"""Benchmark of a large manifest: memory and load time of the dataset object, and one epoch of the batch sampler.

    python scripts/bench/bench_manifest.py --lines 2000000

A ``train.tsv`` of ``--lines`` entries (LibriSpeech-like relative paths, sizes of 1-16 s at 16 kHz) is written
to a temporary folder; its lines cycle through ``--files`` real (empty) files, so that ``FileAudioDataset``'s check
that every listed file exists runs one stat per line. Measured (times without tracemalloc, memory in a second
pass under tracemalloc, which sees numpy's buffers):

1. ``load_manifest`` without the file check, and ``FileAudioDataset`` (with it): seconds, peak traced memory
   while loading, memory the object keeps, and bytes per entry beyond the paths' own bytes; next to it the
   manifest held as fairseq 0.12 holds it without pyarrow (a list of path strings, sizes as an array).
2. One epoch of the batch sampler: the batches of ``FairseqTask._make_batches`` (``max_tokens``, fairseq's BASE
   1.4M samples, ``required_batch_size_multiple`` 8), then every batch of the epoch through ``EpochBatchIterator``
   and its DataLoader (items are their indices: no audio is read), the batches of rank 0 of ``--shards`` ranks,
   and a resume from the middle of the epoch (``state_dict`` / ``load_state_dict``).

Prints a JSON object, then the README rows.
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import torch

from fairseq_lite.data.iterators import EpochBatchIterator
from fairseq_lite.data.manifest import load_manifest, read_utf8_lines
from fairseq_lite.data.raw_audio_dataset import FileAudioDataset
from fairseq_lite.tasks.fairseq_task import FairseqTask

RATE = 16000
BATCHING = dict(max_tokens=1_400_000, max_sentences=None, max_positions=None, ignore_invalid_inputs=False,
                required_batch_size_multiple=8, seed=1)


def write_corpus(folder, lines, files, seed=0):
    """``folder/train.tsv`` of ``lines`` entries over ``files`` empty files; returns its path."""
    names = [f"train-clean-360/{j % 921:04d}/{j % 97:06d}/{j % 921}-{j % 97}-{j:04d}.flac" for j in range(files)]
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        open(os.path.join(folder, name), "wb").close()
    sizes = np.random.default_rng(seed).integers(RATE, 16 * RATE, lines)
    path = os.path.join(folder, "train.tsv")
    with open(path, "w", encoding="utf-8") as f:
        f.write(folder + "\n")
        for start in range(0, lines, 100_000):  # written in chunks: the benchmark's own lists stay small
            rows = range(start, min(lines, start + 100_000))
            f.write("".join(f"{names[i % files]}\t{sizes[i]}\n" for i in rows))
    return path


def fairseq_list(path):
    """The manifest as fairseq 0.12's FileAudioDataset keeps it without pyarrow: path strings and a sizes array."""
    root, *lines = read_utf8_lines(path, "manifest")
    names, sizes = [], []
    for line in lines:
        name, size = line.split("\t")
        names.append(name)
        sizes.append(int(size))
    return root, names, np.asarray(sizes, dtype=np.int64)


def measure(build):
    """(seconds, peak traced MB while building, MB the result keeps, the result): timed once plainly, then again
    under tracemalloc."""
    gc.collect()
    start = time.perf_counter()
    build()
    seconds = time.perf_counter() - start
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = build()
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, (peak - before) / 1e6, (kept - before) / 1e6, result


class IndexItems(torch.utils.data.Dataset):
    """A FileAudioDataset's sizes and order, with items that are their own index: the sampler without the audio."""

    def __init__(self, audio):
        self.audio = audio

    def __len__(self):
        return len(self.audio)

    def __getitem__(self, index):
        return index

    def ordered_indices(self):
        return self.audio.ordered_indices()

    def num_tokens_vec(self, indices):
        return self.audio.num_tokens_vec(indices)

    def collater(self, items):
        return {"id": items}


def sampler_epoch(audio, shards):
    """Seconds and counts of one epoch of batches: build, iterate all, shard, resume from the middle."""
    data = IndexItems(audio)
    start = time.perf_counter()
    batches = FairseqTask._make_batches(data, 1, **BATCHING)
    built = time.perf_counter() - start
    start = time.perf_counter()
    seen = sum(len(batch["id"]) for batch in EpochBatchIterator(data, data.collater, batches).next_epoch_itr())
    epoch = time.perf_counter() - start
    assert seen == len(audio), (seen, len(audio))
    start = time.perf_counter()
    rank0 = EpochBatchIterator(data, data.collater, batches, num_shards=shards, shard_id=0)
    mine = len(rank0.next_epoch_itr())
    sharded = time.perf_counter() - start
    half = EpochBatchIterator(data, data.collater, batches)
    itr = half.next_epoch_itr()
    itr.skip(len(itr) // 2)
    state = half.state_dict()
    start = time.perf_counter()
    resumed = EpochBatchIterator(data, data.collater, batches)
    resumed.load_state_dict(state)
    rest = resumed.next_epoch_itr()
    next(rest)
    resume = time.perf_counter() - start
    assert rest.n == state["iterations_in_epoch"] + 1
    return dict(batches=len(batches), build_s=built, epoch_s=epoch, shards=shards, rank0_batches=mine,
                rank0_materialise_s=sharded, resume_at=state["iterations_in_epoch"], resume_first_batch_s=resume)


def run(lines, files, shards):
    with tempfile.TemporaryDirectory() as folder:
        path = write_corpus(folder, lines, files)
        path_bytes = load_manifest(path, check_files=False).names.buffer.nbytes
        out = dict(lines=lines, manifest_mb=os.path.getsize(path) / 1e6, path_mb=path_bytes / 1e6)
        built = {}
        for key, build in (("load_manifest", lambda: load_manifest(path, check_files=False)),
                           ("FileAudioDataset", lambda: FileAudioDataset(path, RATE)),
                           ("fairseq_list", lambda: fairseq_list(path))):
            seconds, peak, kept, built[key] = measure(build)
            out[key] = dict(seconds=seconds, peak_mb=peak, kept_mb=kept,
                            bytes_per_line_beyond_paths=(kept * 1e6 - path_bytes) / lines)
        out["load_manifest"]["nbytes_mb"] = built["load_manifest"].nbytes / 1e6  # what Manifest.nbytes reports
        out["sampler"] = sampler_epoch(built["FileAudioDataset"], shards)
    return out


def markdown(r):
    m, d, f, s = r["load_manifest"], r["FileAudioDataset"], r["fairseq_list"], r["sampler"]
    lines = f"{r['lines']:,}-line manifest ({r['manifest_mb']:.0f} MB, {r['path_mb']:.0f} MB of paths)"
    return "\n".join([
        "| measurement | fairseq_lite | fairseq's list of str |",
        "|---|---|---|",
        f"| {lines}: memory kept (MB) | {d['kept_mb']:.0f} ({d['bytes_per_line_beyond_paths']:.0f} B/line beyond "
        f"the paths) | {f['kept_mb']:.0f} ({f['bytes_per_line_beyond_paths']:.0f} B/line) |",
        f"| peak memory while loading (MB) | {d['peak_mb']:.0f} | {f['peak_mb']:.0f} |",
        f"| load time (s), without / with the stat of every file | {m['seconds']:.2f} / {d['seconds']:.2f} | "
        f"{f['seconds']:.2f} (no stat) |",
        f"| one sampler epoch: {s['batches']:,} batches (max_tokens 1.4M) | build {s['build_s']:.2f} s, all batches "
        f"through the loader {s['epoch_s']:.2f} s, rank 0 of {s['shards']} ({s['rank0_batches']:,} batches) "
        f"{s['rank0_materialise_s']:.2f} s, resume at batch {s['resume_at']:,} {s['resume_first_batch_s']:.2f} s | |",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=1000, help="real files the lines cycle through")
    parser.add_argument("--shards", type=int, default=8, help="data-parallel ranks of the sharding measurement")
    args = parser.parse_args()
    result = run(args.lines, args.files, args.shards)
    json.dump(result, sys.stdout, indent=1)
    print("\n" + markdown(result))


if __name__ == "__main__":
    main()
