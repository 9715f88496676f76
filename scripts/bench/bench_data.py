#!/usr/bin/env python
"""Benchmark of the data pipeline: manifest creation, length batching and loader throughput.

    python scripts/bench/bench_data.py --files 2000 --seconds 2 --workers 0 2

1. Manifest: frame counts of N flac files read by our parallel scan vs one by one with
   soundfile.info (what fairseq's wav2vec_manifest.py does).
2. Batching: batch_by_size over a million synthetic lengths vs the greedy per-example Python loop
   (fairseq's pure-Python fallback), timed on a slice and scaled.
3. Loader: one epoch of FileAudioDataset through EpochBatchIterator with 0 and 2 workers, in
   utterances/s and seconds of audio per second; 0 workers again with one torch thread.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from fairseq_lite.data.batching import batch_by_size
from fairseq_lite.data.manifest import scan_folder, write_manifest
from fairseq_lite.data.raw_audio_dataset import FileAudioDataset
from fairseq_lite.tasks.fairseq_task import FairseqTask

RATE = 16000


def make_files(folder, n, seconds, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        length = int(RATE * seconds * rng.uniform(0.5, 1.5))
        sub = os.path.join(folder, f"spk{i % 20}")
        os.makedirs(sub, exist_ok=True)
        sf.write(os.path.join(sub, f"utt{i}.flac"), rng.normal(0, 0.1, length).astype(np.float32), RATE)


def evict_from_page_cache(folder):
    """Drop ``folder``'s files from the page cache (posix_fadvise), as for the first scan of a corpus."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def bench_manifest(folder, workers):
    """Our scan and fairseq's sequential soundfile.info over the same files, each from a cold page cache."""
    evict_from_page_cache(folder)
    t = time.perf_counter()
    scan = scan_folder(folder, ext="flac", valid_percent=0.01, workers=workers)
    ours = time.perf_counter() - t
    evict_from_page_cache(folder)
    t = time.perf_counter()
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".flac"):
                sf.info(os.path.join(root, name)).frames
    sequential = time.perf_counter() - t
    return scan, {"files": len(scan.train) + len(scan.valid), "hours": round(scan.seconds / 3600, 3),
                  "scan_s": round(ours, 3), "sequential_soundfile_info_s": round(sequential, 3),
                  "speedup": round(sequential / ours, 2), "scan_workers": workers}


def greedy_python(indices, tokens, max_tokens, mult):
    """The per-example greedy loop of fairseq's pure-Python batch_by_size."""
    batches, batch, lengths, longest = [], [], [], 0
    for idx, n in zip(indices, tokens):
        longest = max(longest, n)
        if (len(batch) + 1) * longest > max_tokens:
            cut = max(mult * (len(batch) // mult), len(batch) % mult)
            batches.append(batch[:cut])
            batch, lengths = batch[cut:], lengths[cut:]
            longest = max(lengths + [n])
        batch.append(idx)
        lengths.append(n)
    batches.append(batch)
    return batches


def bench_batching(n=1_000_000, max_tokens=1_400_000, slice_n=100_000):
    rng = np.random.default_rng(0)
    sizes = rng.integers(32_000, 250_000, n)
    order = np.lexsort((rng.permutation(n), sizes))[::-1]
    t = time.perf_counter()
    batches = batch_by_size(order, sizes[order], max_tokens, None, 8)
    ours = time.perf_counter() - t
    tokens = sizes[order].tolist()
    t = time.perf_counter()
    greedy_python(order[:slice_n].tolist(), tokens[:slice_n], max_tokens, 8)
    python = (time.perf_counter() - t) * n / slice_n
    return {"utterances": n, "batches": len(batches), "batch_by_size_s": round(ours, 3),
            "python_loop_s_scaled": round(python, 3), "speedup": round(python / ours, 2)}


def bench_loader(manifest, workers, max_tokens, threads):
    torch.set_num_threads(threads)
    ds = FileAudioDataset(manifest, RATE, max_sample_size=250_000, min_sample_size=0)
    itr = FairseqTask(None).get_batch_iterator(ds, max_tokens=max_tokens, seed=1, num_workers=workers,
                                               data_buffer_size=10, disable_iterator_cache=True)
    t = time.perf_counter()
    utterances = samples = 0
    for batch in itr.next_epoch_itr():
        utterances += len(batch["id"])
        samples += batch["net_input"]["source"].numel()
    elapsed = time.perf_counter() - t
    return {"num_workers": workers, "main_process_torch_threads": threads, "utterances_per_s": round(utterances / elapsed, 1),
            "audio_s_per_s": round(samples / RATE / elapsed, 1), "epoch_s": round(elapsed, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0, help="mean file duration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to time")
    parser.add_argument("--scan-workers", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=400_000)
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as folder:
        make_files(folder, args.files, args.seconds)
        scan, results["manifest"] = bench_manifest(folder, args.scan_workers)
        manifest = os.path.join(folder, "train.tsv")
        write_manifest(manifest, scan.root, scan.train + scan.valid)
        results["batching"] = bench_batching()
        # 0 workers with torch's default threads and with one: the gap is thread oversubscription
        threads = torch.get_num_threads()
        results["loader"] = [bench_loader(manifest, w, args.max_tokens, threads) for w in args.workers]
        results["loader"] += [bench_loader(manifest, 0, args.max_tokens, 1)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
