#!/usr/bin/env python
"""Labels for fine-tuning on any corpus: {name}.wrd, {name}.ltr and dict.ltr.txt from a manifest and transcripts.

    python scripts/make_labels.py data/train.tsv --transcripts text.txt --output-dir data --output-name train
    python scripts/make_labels.py data/valid.tsv --sidecar-ext txt --output-dir data --output-name valid --no-dict

--transcripts: lines "<key> <text>" (tab or first space), the key being the audio's path relative to
the manifest root, that path without extension, or the file name without extension.
--sidecar-ext: one transcript file per audio file, same name with this extension.
dict.ltr.txt lists every letter of the written .ltr file, most frequent first (fairseq's format);
write it from the training split and pass --no-dict for the others, so the symbol order stays fixed.
"""

import argparse
import logging
import os
from functools import partial

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.labels import corpus_transcripts, dictionary_from_labels, letters, normalize_text, write_label_files

logger = logging.getLogger("make_labels")


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv", help="manifest (root line, then relpath<TAB>frames)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--transcripts", help="text file of '<key> <text>' lines")
    source.add_argument("--sidecar-ext", help="extension of the transcript file beside each audio file, e.g. txt")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--output-name", required=True, help="split name: writes NAME.wrd and NAME.ltr")
    parser.add_argument("--case", choices=["keep", "upper", "lower"], default="keep", help="change the case of the text")
    parser.add_argument("--remove-punctuation", action="store_true", help="drop punctuation and symbols (not apostrophes)")
    parser.add_argument("--no-dict", action="store_true", help="do not write dict.ltr.txt")
    args = parser.parse_args(argv)
    setup_logging()
    check_output_dir(args.output_dir, "--output-dir")
    normalize = partial(normalize_text, case=args.case, remove_punctuation=args.remove_punctuation)
    texts = corpus_transcripts(args.tsv, args.transcripts, args.sidecar_ext, normalize)
    wrd, ltr = write_label_files(texts, args.output_dir, args.output_name)
    logger.info("wrote %d lines to %s and %s", len(texts), wrd, ltr)
    if not args.no_dict:
        dictionary = dictionary_from_labels(letters(t) for t in texts)
        path = os.path.join(args.output_dir, "dict.ltr.txt")
        dictionary.save(path)
        logger.info("wrote %s: %d symbols (model vocabulary %d with the 4 specials)", path, len(dictionary) - 4, len(dictionary))
    return 0


if __name__ == "__main__":
    run_cli(main)
