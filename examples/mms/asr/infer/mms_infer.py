#!/usr/bin/env python
"""Transcribe audio files with an MMS CTC model (fairseq's ``examples/mms/asr/infer/mms_infer.py``)::

    python examples/mms/asr/infer/mms_infer.py --model mms1b_all.pt --lang eng --audio a.wav b.wav

As fairseq's, it writes a temporary manifest folder (``dev.tsv``, dummy ``dev.ltr``/``dev.wrd``, ``dev.uid``),
decodes it with new/infer.py, ``--config-dir examples/mms/asr/config --config-name infer_common`` and
``dataset.gen_subset=<lang>:dev`` (viterbi), and prints ``Input: <file>`` / ``Output: <transcript>`` per file.
Unlike fairseq's (which sends the decoder's output to DEVNULL and then fails on a missing ``hypo.word``,
fairseq#5117), decoding runs in this process and its errors are shown as one line (an unknown language lists the
model's); missing or unreadable audio is named before the model loads; relative audio paths work (fairseq's
manifest root ``/`` breaks them); without CUDA it decodes on the CPU (fairseq stops). ``--cpu`` forces the CPU.
"""

import argparse
import logging
import os
import re
import sys
import tempfile
from typing import List, Optional, Tuple

import soundfile as sf

from fairseq_lite.cli import hydra_infer
from fairseq_lite.cli.common import run_cli
from fairseq_lite.errors import DataError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
#: fairseq's mms_infer.py decodes with this batch size (samples)
MAX_TOKENS = 1_440_000
_UTTERANCE = re.compile(r"\(None-(\d+)\)$")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ASR inference script for MMS model")
    parser.add_argument("--model", required=True, help="path to ASR model")
    parser.add_argument("--audio", required=True, nargs="+", help="path to audio file")
    parser.add_argument("--lang", required=True, help="audio language")
    parser.add_argument("--format", choices=["none", "letter"], default="letter")
    parser.add_argument("--cpu", action="store_true", help="decode on the CPU even when CUDA is available")
    return parser


def write_manifest(folder: str, audio: List[str]) -> None:
    """fairseq's temporary ``dev.{tsv,ltr,wrd,uid}``; each file must exist and be readable audio."""
    rows = []
    for path in audio:
        if not os.path.isfile(path):
            raise DataError(f"audio file {path} does not exist (--audio)")
        try:
            frames = sf.info(path).frames
        except (RuntimeError, sf.LibsndfileError) as err:
            raise DataError(f"cannot read audio file {path} (--audio): {' '.join(str(err).split())}") from None
        rows.append(f"{os.path.abspath(path)}\t{frames}\n")
    texts = {"tsv": "/\n" + "".join(rows), "ltr": "d u m m y | d u m m y |\n" * len(audio),
             "wrd": "dummy dummy\n" * len(audio), "uid": "".join(f"{path}\n" for path in audio)}
    for ext, text in texts.items():
        with open(os.path.join(folder, f"dev.{ext}"), "w", encoding="utf-8") as f:
            f.write(text)


def infer_overrides(args: argparse.Namespace, folder: str) -> List[str]:
    """fairseq's new/infer.py command line of mms_infer.py, with the sweep folder inside ``folder``."""
    overrides = ["-m", "--config-dir", CONFIG_DIR, "--config-name", "infer_common", "decoding.type=viterbi",
                 f"dataset.max_tokens={MAX_TOKENS}", "distributed_training.distributed_world_size=1",
                 f"common_eval.path='{os.path.abspath(args.model)}'", f"task.data='{folder}'",
                 f"dataset.gen_subset='{args.lang}:dev'", f"common_eval.post_process={args.format}",
                 f"decoding.results_path='{folder}'", f"hydra.sweep.dir='{folder}/run'", "common_eval.quiet=true"]
    return overrides + (["common.cpu=true"] if args.cpu else [])


def read_hypotheses(path: str) -> List[Tuple[int, str]]:
    """(utterance index, text) of each ``<text> (None-<id>)`` line of ``hypo.word``, in index order."""
    outputs = []
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            match = _UTTERANCE.search(line)
            outputs.append((int(match.group(1)), line[: match.start()].strip()))
    return sorted(outputs)


class DummyLabelFilter(logging.Filter):
    """Drops the task's ``<unk>`` warning about the dummy labels in ``folder`` (they are not the model's letters)."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.folder)


def main(argv: List[str]) -> Optional[int]:
    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.model):
        raise DataError(f"model {args.model} does not exist (--model)")
    with tempfile.TemporaryDirectory() as folder:
        print(">>> preparing tmp manifest dir ...", file=sys.stderr)
        write_manifest(folder, args.audio)
        print(">>> loading model & running inference ...", file=sys.stderr)
        task_logger, quiet = logging.getLogger("fairseq_lite.tasks.audio_finetuning"), DummyLabelFilter(folder)
        task_logger.addFilter(quiet)
        try:
            hydra_infer.main(infer_overrides(args, folder))
        finally:
            task_logger.removeFilter(quiet)
        for index, text in read_hypotheses(os.path.join(folder, "hypo.word")):
            print(f"===============\nInput: {args.audio[index]}\nOutput: {text}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_cli(main)
