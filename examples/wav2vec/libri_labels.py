#!/usr/bin/env python
"""Write {name}.wrd and {name}.ltr for a LibriSpeech manifest (fairseq's libri_labels.py).

    python examples/wav2vec/libri_labels.py /path/to/train.tsv --output-dir /output/dir --output-name train

The transcript of each audio file is read from the <speaker>-<chapter>.trans.txt beside it. For any
other corpus use scripts/make_labels.py.
"""

import argparse

from fairseq_lite.cli.common import check_output_dir, run_cli
from fairseq_lite.data.labels import libri_transcripts, write_label_files


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv", help="manifest (root line, then relpath<TAB>frames)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--output-name", required=True)
    args = parser.parse_args(argv)
    check_output_dir(args.output_dir, "--output-dir")
    write_label_files(libri_transcripts(args.tsv), args.output_dir, args.output_name)
    return 0


if __name__ == "__main__":
    run_cli(main)
