#!/usr/bin/env python
"""Throughput of HuBERT's label tools (examples/hubert/simple_kmeans) against real time, in audio seconds per second.

    python scripts/bench/bench_labels.py --files 12 --seconds 5 --repeats 3 --threads 2

Over one manifest of synthetic FLAC files (``--files`` of about ``--seconds`` each, bench_data.make_files), the
tools' ``main`` functions run in this process, timed by common.alternate (median of ``--repeats`` after a
warm-up, one shard):
1. dump_mfcc_feature.py: 39-dim MFCC + Δ + ΔΔ (HuBERT's first iteration; the tool runs on one thread);
2. dump_hubert_feature.py: layer 6 of a HuBERT BASE (bench_hubert's untrained model, saved as a checkpoint) on
   the CPU, ``--threads`` torch threads (the second iteration's features);
3. dump_km_label.py: the nearest of 100 clusters for every MFCC frame, and of 500 for every BASE layer-6 frame
   (fairseq's cluster counts of the two iterations; k-means fitted by learn_kmeans.py with one init).
A ratio above 1 is faster than real time. Prints JSON.
"""

import argparse
import contextlib
import io
import json
import os
import runpy
import sys
import tempfile

import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fairseq_lite.data.kmeans_labels import write_label_dictionary  # noqa: E402
from fairseq_lite.data.manifest import scan_folder, write_manifest  # noqa: E402
from fairseq_lite.file_io import atomic_save  # noqa: E402

import bench_data  # noqa: E402
import bench_hubert  # noqa: E402
from common import RATE, alternate  # noqa: E402

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "examples", "hubert", "simple_kmeans")
#: (name, feature folder, clusters) of the labelled feature sets
LABELLED = (("MFCC", "mfcc", 100), ("HuBERT BASE layer 6", "hubert", 500))


def tool(name: str):
    """A simple_kmeans script's ``main(argv)``."""
    return runpy.run_path(os.path.join(TOOLS, f"{name}.py"))["main"]


def base_checkpoint(folder: str) -> str:
    """A ``hubert`` checkpoint of HuBERT BASE's shape (bench_hubert's model, 504 classes as fairseq's 500 clusters
    give), its task's ``dict.km.txt`` written beside it."""
    ours, _ = bench_hubert.build_pair()
    cfg = {"model": {**vars(ours.cfg), "_name": "hubert"},
           "task": {"_name": "hubert_pretraining", "data": folder, "label_dir": folder, "labels": ["km"],
                    "label_rate": ours.cfg.label_rate, "sample_rate": RATE, "normalize": False}}
    write_label_dictionary(os.path.join(folder, "dict.km.txt"), 500)
    path = os.path.join(folder, "hubert_base.pt")
    atomic_save({"cfg": cfg, "model": ours.state_dict()}, path)
    return path


def timed_tool(name: str, argv, repeats: int, threads: int) -> dict:
    """Median wall and CPU seconds of ``name``'s main on ``argv`` (progress bars muted, ``threads`` set first)."""
    main = tool(name)

    def call():
        torch.set_num_threads(threads)
        with contextlib.redirect_stderr(io.StringIO()):
            main(list(argv))

    return alternate({name: call}, repeats)[name]


def run(args) -> dict:
    """Every tool's timing over one manifest: {row name: {wall, cpu, audio_s_per_s, audio_s_per_cpu_s}, "setup": …}
    (wall and process CPU seconds, medians)."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        audio = os.path.join(folder, "audio")
        bench_data.make_files(audio, args.files, args.seconds)
        scan = scan_folder(audio, ext="flac", valid_percent=0.0, workers=1)
        write_manifest(os.path.join(folder, "train.tsv"), scan.root, scan.train)
        seconds = sum(sf.info(os.path.join(audio, rel)).frames for rel, _ in scan.train) / RATE
        feats = {key: os.path.join(folder, key) for _, key, _ in LABELLED}
        checkpoint = base_checkpoint(folder)
        dumps = {"dump_mfcc_feature": ["train", "1", "0", feats["mfcc"]],
                 "dump_hubert_feature": ["train", checkpoint, "6", "1", "0", feats["hubert"], "--device", "cpu"]}
        for name, rest in dumps.items():
            results[name] = timed_tool(name, [folder, *rest], args.repeats, args.threads)
        for label, key, clusters in LABELLED:
            km_path = os.path.join(folder, f"{key}_km{clusters}.bin")
            with contextlib.redirect_stdout(io.StringIO()):  # scikit-learn's per-step lines
                tool("learn_kmeans")([feats[key], "train", "1", km_path, str(clusters), "--n_init", "1"])
            argv = [feats[key], "train", km_path, "1", "0", os.path.join(folder, f"labels_{key}")]
            results[f"dump_km_label {label}"] = timed_tool("dump_km_label", argv, args.repeats, args.threads)
    for timing in results.values():
        timing.update(audio_s_per_s=seconds / timing["wall"], audio_s_per_cpu_s=seconds / timing["cpu"])
    results["setup"] = {"files": args.files, "audio_s": seconds, "threads": args.threads, "repeats": args.repeats,
                        "clusters": {label: clusters for label, _, clusters in LABELLED}}
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12, help="FLAC files in the manifest")
    parser.add_argument("--seconds", type=float, default=5.0, help="mean seconds per file (0.5× to 1.5×)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of dump_hubert_feature.py")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(run(parse_args()), indent=2))
