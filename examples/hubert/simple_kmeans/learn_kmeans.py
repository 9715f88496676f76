#!/usr/bin/env python
"""Fit a k-means model on the features of every shard of a split (fairseq's simple_kmeans/learn_kmeans.py).

    python examples/hubert/simple_kmeans/learn_kmeans.py ${feat_dir} ${split} ${nshard} ${km_path} ${n_clusters} \\
        --percent 0.1

Reads ``${feat_dir}/${split}_${rank}_${nshard}.{npy,len}`` for every rank (all frames, or with ``--percent`` the
frames of that fraction of each shard's utterances), fits scikit-learn's MiniBatchKMeans with fairseq's
defaults and saves it with joblib to ``${km_path}`` (fairseq's dump_km_label.py reads it; it is a pickle: share
it like code). The same ``--seed`` draws the same sample and initialisation as fairseq's script. Needs
``pip install 'fairseq_lite[hubert]'``.
"""

import argparse
import logging

import numpy as np

from fairseq_lite.cli.common import run_cli, setup_logging
from fairseq_lite.data.feature_shards import sample_shard_features
from fairseq_lite.data.kmeans_labels import fit_kmeans, minibatch_kmeans, save_kmeans

logger = logging.getLogger("learn_kmeans")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("feat_dir", help="folder of the feature shards")
    parser.add_argument("split", help="split name of the shards (train, ...)")
    parser.add_argument("nshard", type=int, help="number of shards the features were written in")
    parser.add_argument("km_path", help="where the k-means model is saved")
    parser.add_argument("n_clusters", type=int, help="number of clusters (fairseq: 100 on MFCC, 500 on HuBERT)")
    parser.add_argument("--seed", default=0, type=int, help="seed of the sampling and of k-means")
    parser.add_argument("--percent", default=-1, type=float, help="fraction of each shard's utterances; -1 for all")
    parser.add_argument("--init", default="k-means++", help="k-means++ or random")
    parser.add_argument("--max_iter", default=100, type=int)
    parser.add_argument("--batch_size", default=10000, type=int)
    parser.add_argument("--tol", default=0.0, type=float)
    parser.add_argument("--max_no_improvement", default=100, type=int)
    parser.add_argument("--n_init", default=20, type=int)
    parser.add_argument("--reassignment_ratio", default=0.0, type=float)
    return parser


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    rng = np.random.RandomState(args.seed)  # fairseq seeds numpy's global generator; this one draws the same
    model = minibatch_kmeans(args.n_clusters, args.init, args.max_iter, args.batch_size, args.tol,
                             args.max_no_improvement, args.n_init, args.reassignment_ratio, random_state=rng)
    features = sample_shard_features(args.feat_dir, args.split, args.nshard, args.percent, rng)
    logger.info("loaded features of shape %s", features.shape)
    inertia = fit_kmeans(model, features, f"{args.feat_dir}/{args.split}_*_{args.nshard}.npy")
    save_kmeans(model, args.km_path)
    logger.info("total inertia: %.5f; saved %s", inertia, args.km_path)
    return 0


if __name__ == "__main__":
    run_cli(main)
