"""``fairseq-train``: the legacy flag-style training command (fairseq_cli/train.py), e.g. wav2vec 1.0's::

    fairseq-train /manifest/path --save-dir /model/path --arch wav2vec --task audio_pretraining \\
        --optimizer adam --lr 0.005 --lr-scheduler cosine --criterion wav2vec --max-update 400000 ...

The flags are generated from the same dataclasses as the yaml configs; booleans take ``--flag`` and
``--no-flag`` (see fairseq_lite.dataclass.legacy_parser for the one deliberate difference from fairseq).
"""

from __future__ import annotations

from typing import List, Optional

from fairseq_lite.cli.common import launch_training, run_cli
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.dataclass.legacy_parser import build_help, parse_legacy_args


def main(argv: List[str]) -> Optional[int]:
    if "-h" in argv or "--help" in argv:
        print(build_help(argv))
        return 0
    cfg = finalize_config(parse_legacy_args(argv))
    launch_training(cfg)
    return 0


def cli_main() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli_main()
