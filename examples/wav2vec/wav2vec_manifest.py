#!/usr/bin/env python
"""Write train.tsv / valid.tsv manifests for a folder of audio (fairseq's wav2vec_manifest.py).

    python examples/wav2vec/wav2vec_manifest.py /path/to/waves --dest /manifest/path --ext flac --valid-percent 0.01

Frame counts are read in parallel; the summary reports files, hours and unreadable files. Unlike
fairseq, a folder with no matching files is an error (fairseq writes a header-only manifest), and
files are split in sorted order so the same seed gives the same split on every machine. Linked folders
are read once each (a link loop does not repeat files). Files whose names a tsv cannot hold (a tab or a
line break, or not UTF-8) are left out with a warning like unreadable ones, so that one odd name does not
stop a long scan. Both manifests replace the old ones only when the scan succeeds, and ``--valid-percent
0`` deletes a valid.tsv left by an earlier run (it would overlap the new train.tsv).
"""

import argparse
import logging
import os
import sys

from tqdm import tqdm

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.manifest import scan_folder, write_manifest
from fairseq_lite.file_io import AtomicOutputs

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
    check_output_dir(args.dest, "--dest")
    scan = scan_folder(
        args.root,
        ext=args.ext,
        valid_percent=args.valid_percent,
        seed=args.seed,
        path_must_contain=args.path_must_contain,
        workers=args.workers,
        progress=lambda results: tqdm(results, desc="reading frame counts", unit="file", file=sys.stderr),
    )
    valid_tsv = os.path.join(args.dest, "valid.tsv")
    with AtomicOutputs() as outputs:
        write_manifest(os.path.join(args.dest, "train.tsv"), scan.root, scan.train, outputs)
        if args.valid_percent > 0:
            write_manifest(valid_tsv, scan.root, scan.valid, outputs)
        elif os.path.lexists(valid_tsv):
            logger.info("removing %s from an earlier run: --valid-percent 0 puts every file in train.tsv", valid_tsv)
            outputs.remove(valid_tsv)
    for path, reason in scan.unreadable[:10]:
        logger.warning("left out %s: %s", path if path.isprintable() else ascii(path), reason)
    logger.info(
        "%d files (%.2f hours): %d in train.tsv, %d in valid.tsv; %d could not be read and were left out",
        len(scan.train) + len(scan.valid), scan.seconds / 3600, len(scan.train), len(scan.valid), len(scan.unreadable),
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
