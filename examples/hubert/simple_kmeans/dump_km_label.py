#!/usr/bin/env python
"""Write the k-means labels of one feature shard (fairseq's simple_kmeans/dump_km_label.py).

    python examples/hubert/simple_kmeans/dump_km_label.py ${feat_dir} ${split} ${km_path} ${nshard} ${rank} ${lab_dir}

Reads ``${feat_dir}/${split}_${rank}_${nshard}.{npy,len}`` and writes ``${lab_dir}/${split}_${rank}_${nshard}.km``:
one line per utterance, the nearest cluster of each frame (scikit-learn's ``predict``), space-separated. Then
write_km_dict.py merges the shards into ``${split}.km`` and writes ``dict.km.txt``.
"""

import argparse
import logging
import sys

from tqdm import tqdm

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.feature_shards import read_feature_shard, shard_path, split_utterances, write_label_shard
from fairseq_lite.data.kmeans_labels import check_feature_dim, load_kmeans, predict_labels

logger = logging.getLogger("dump_km_label")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("feat_dir", help="folder of the feature shards")
    parser.add_argument("split", help="split name of the shards (train, valid, ...)")
    parser.add_argument("km_path", help="k-means model written by learn_kmeans.py")
    parser.add_argument("nshard", type=int, help="number of shards the features were written in")
    parser.add_argument("rank", type=int, help="the shard to label, 0 … nshard-1")
    parser.add_argument("lab_dir", help="output folder")
    return parser


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args.lab_dir, "lab_dir")
    model = load_kmeans(args.km_path)
    features, lengths = read_feature_shard(args.feat_dir, args.split, args.rank, args.nshard)
    check_feature_dim(model, args.km_path, features.shape[1], shard_path(args.feat_dir, args.split, args.rank,
                                                                         args.nshard, "npy"))
    utterances = tqdm(split_utterances(features, lengths), total=len(lengths), unit="utt", file=sys.stderr)
    path = write_label_shard(args.lab_dir, args.split, args.rank, args.nshard,
                             (predict_labels(model, x) for x in utterances))
    logger.info("wrote the labels of %d utterances to %s", len(lengths), path)
    return 0


if __name__ == "__main__":
    run_cli(main)
