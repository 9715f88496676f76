#!/usr/bin/env python
"""Write the 39-dim MFCC + Δ + ΔΔ features of one manifest shard (fairseq's simple_kmeans/dump_mfcc_feature.py).

    python examples/hubert/simple_kmeans/dump_mfcc_feature.py ${tsv_dir} ${split} ${nshard} ${rank} ${feat_dir}

Shard ``rank`` (0 … nshard−1) of ``${tsv_dir}/${split}.tsv`` becomes ``${feat_dir}/${split}_${rank}_${nshard}.npy``
(T×39 float32 frames of every utterance, concatenated) and ``.len`` (frames per utterance), fairseq's layout:
Kaldi MFCCs (fairseq_lite.data.mfcc, equal to torchaudio's within 1e-3) at 100 frames per second, the features
of HuBERT's first iteration. Audio at another rate than ``--sample_rate`` is resampled. Both files replace
earlier ones only when the shard is complete. One thread per process: run the shards in parallel to use more
cores.
"""

import argparse
import sys

import torch
from tqdm import tqdm

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.feature_shards import dump_feature_shard, read_shard_audio
from fairseq_lite.data.mfcc import mfcc_with_deltas


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv_dir", help="folder holding ${split}.tsv")
    parser.add_argument("split", help="manifest name without .tsv (train, valid, ...)")
    parser.add_argument("nshard", type=int, help="number of shards the manifest is cut into")
    parser.add_argument("rank", type=int, help="the shard to write, 0 … nshard-1")
    parser.add_argument("feat_dir", help="output folder")
    parser.add_argument("--sample_rate", type=int, default=16000, help="audio rate the MFCCs are computed at")
    return parser


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args.feat_dir, "feat_dir")
    min_samples = int(args.sample_rate * 0.025)  # one 25 ms frame
    torch.set_num_threads(1)  # frame-sized work gains nothing from more threads and slows 10x on a busy machine

    def featurize(utterance):
        return mfcc_with_deltas(read_shard_audio(utterance, args.sample_rate, min_samples), args.sample_rate).numpy()

    dump_feature_shard(f"{args.tsv_dir}/{args.split}.tsv", args.split, args.nshard, args.rank, args.feat_dir,
                       featurize, lambda items: tqdm(items, unit="file", file=sys.stderr))
    return 0


if __name__ == "__main__":
    run_cli(main)
