#!/usr/bin/env python
"""Write ``dict.km.txt`` from a k-means model, and merge label shards into ``${split}.km`` (the last two steps
of fairseq's simple_kmeans README, done by one command).

    python examples/hubert/simple_kmeans/write_km_dict.py ${lab_dir} ${km_path} --split train valid --nshard ${nshard}

``${lab_dir}/dict.km.txt`` gets one ``i 1`` line per cluster of the model (0 … n_clusters−1), the dictionary
``task.labels=["km"]`` reads. fairseq's README loop writes it from a shell variable that is not the one the
model was trained with (``n_clusters`` vs ``n_cluster``, fairseq PR #4521): an empty dictionary, and training
learns nothing without a word of warning. With ``--split``, each split's ``${split}_${rank}_${nshard}.km``
shards are concatenated in rank order into ``${split}.km`` (a missing shard is an error).
"""

import argparse
import logging
import os

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.feature_shards import merge_label_shards
from fairseq_lite.data.kmeans_labels import load_kmeans, write_label_dictionary
from fairseq_lite.errors import ConfigError

logger = logging.getLogger("write_km_dict")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lab_dir", help="label folder: dict.km.txt (and ${split}.km) are written here")
    parser.add_argument("km_path", help="the k-means model the labels come from")
    parser.add_argument("--split", nargs="*", default=[], help="splits whose label shards are merged")
    parser.add_argument("--nshard", type=int, default=None, help="number of label shards of each split")
    return parser


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args.lab_dir, "lab_dir")
    if args.split and args.nshard is None:
        raise ConfigError("--split needs --nshard: the number of shards dump_km_label.py wrote")
    n_clusters = len(load_kmeans(args.km_path).cluster_centers_)
    for split in args.split:
        logger.info("merged the label shards into %s", merge_label_shards(args.lab_dir, split, args.nshard))
    write_label_dictionary(os.path.join(args.lab_dir, "dict.km.txt"), n_clusters)
    logger.info("wrote %s with %d labels", os.path.join(args.lab_dir, "dict.km.txt"), n_clusters)
    return 0


if __name__ == "__main__":
    run_cli(main)
