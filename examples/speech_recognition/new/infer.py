#!/usr/bin/env python3
"""fairseq's ``examples/speech_recognition/new/infer.py`` command: Hydra-configured CTC decoding.

A thin wrapper over ``fairseq_lite.cli.hydra_infer``; see there (or ``--help``) for the keys and outputs. Without
``--config-name`` it composes ``conf/infer.yaml`` beside this file, fairseq's default config.
"""

import os

from fairseq_lite.cli.hydra_infer import cli_main

if __name__ == "__main__":
    cli_main(default_config_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"))
