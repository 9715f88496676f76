#!/usr/bin/env python3
"""fairseq's ``examples/speech_recognition/infer.py`` command: CTC decoding (viterbi, kenlm, fairseqlm).

A thin wrapper over ``fairseq_lite.cli.infer``; see there (or ``--help``) for the flags and outputs.
"""

from fairseq_lite.cli.infer import cli_main

if __name__ == "__main__":
    cli_main()
