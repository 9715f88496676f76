#!/usr/bin/env python
"""Write train.tsv / valid.tsv manifests for a folder of audio (fairseq's wav2vec_manifest.py).

    python examples/wav2vec/wav2vec_manifest.py /path/to/waves --dest /manifest/path --ext flac --valid-percent 0.01

Frame counts are read in parallel; the summary reports files, hours and unreadable files. Unlike
fairseq, a folder with no matching files is an error (fairseq writes a header-only manifest), and
files are split in sorted order so the same seed gives the same split on every machine.
"""

import argparse
import logging
import os
import sys

from tqdm import tqdm

from fairseq_lite.cli.common import run_cli, setup_logging
from fairseq_lite.data.manifest import scan_folder, write_manifest

logger = logging.getLogger("wav2vec_manifest")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="DIR", help="root directory containing the audio files (searched recursively)")
    parser.add_argument("--valid-percent", default=0.01, type=float, metavar="D",
                        help="fraction of files to put in valid.tsv (0 writes no valid.tsv)")
    parser.add_argument("--dest", default=".", type=str, metavar="DIR", help="output directory")
    parser.add_argument("--ext", default="flac", type=str, metavar="EXT", help="extension to look for")
    parser.add_argument("--seed", default=42, type=int, metavar="N", help="random seed of the split")
    parser.add_argument("--path-must-contain", default=None, type=str, metavar="FRAG",
                        help="only keep files whose real path contains this string")
    parser.add_argument("--workers", default=min(16, os.cpu_count() or 1), type=int, metavar="N",
                        help="processes reading frame counts")
    return parser


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    scan = scan_folder(
        args.root,
        ext=args.ext,
        valid_percent=args.valid_percent,
        seed=args.seed,
        path_must_contain=args.path_must_contain,
        workers=args.workers,
        progress=lambda results: tqdm(results, desc="reading frame counts", unit="file", file=sys.stderr),
    )
    os.makedirs(args.dest, exist_ok=True)
    write_manifest(os.path.join(args.dest, "train.tsv"), scan.root, scan.train)
    if args.valid_percent > 0:
        write_manifest(os.path.join(args.dest, "valid.tsv"), scan.root, scan.valid)
    for path, reason in scan.unreadable[:10]:
        logger.warning("could not read %s: %s", path, reason)
    logger.info(
        "%d files (%.2f hours): %d in train.tsv, %d in valid.tsv; %d could not be read and were left out",
        len(scan.train) + len(scan.valid), scan.seconds / 3600, len(scan.train), len(scan.valid), len(scan.unreadable),
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
