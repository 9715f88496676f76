#!/usr/bin/env python3
"""Write a flashlight letter lexicon (``WORD<TAB>W O R D |``) for a word list and a target dictionary.

    python scripts/make_lexicon.py --words words.txt --dict data/dict.ltr.txt --output lexicon.lst

Every whitespace-separated token of ``--words`` (a word list or any text, e.g. the LM training text)
becomes one entry, in order of first appearance. Words with a letter that is not in the dictionary
cannot be emitted by the model; they are left out and counted, with the first few named.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Iterator, List, Tuple

from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.errors import FairseqLiteError


def unique_words(lines: Iterable[str], uppercase: bool) -> Iterator[str]:
    seen = set()
    for line in lines:
        for word in line.split():
            word = word.upper() if uppercase else word
            if word not in seen:
                seen.add(word)
                yield word


def letter_lexicon(words: Iterable[str], tgt_dict: Dictionary, boundary: str) -> Tuple[List[str], List[str]]:
    """(lexicon lines, skipped words): each word spelled letter by letter, then ``boundary`` if given."""
    lines, skipped = [], []
    suffix = f" {boundary}" if boundary else ""
    for word in words:
        if all(letter in tgt_dict for letter in word):
            lines.append(f"{word}\t{' '.join(word)}{suffix}")
        else:
            skipped.append(word)
    return lines, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", required=True, help="word list or text; every token becomes an entry")
    parser.add_argument("--dict", required=True, help="target dictionary (dict.ltr.txt)")
    parser.add_argument("--output", required=True, help="lexicon file to write")
    parser.add_argument("--boundary", default="|", help="word-boundary unit ending each spelling ('' for none)")
    parser.add_argument("--uppercase", action="store_true", help="upper-case words (fairseq's letter dictionaries)")
    args = parser.parse_args(argv)
    try:
        tgt_dict = Dictionary.load(args.dict)
        if args.boundary and args.boundary not in tgt_dict:
            raise FairseqLiteError(f"word boundary {args.boundary!r} is not in {args.dict}: pass --boundary ''")
        with open(args.words, encoding="utf-8") as f:
            lines, skipped = letter_lexicon(unique_words(f, args.uppercase), tgt_dict, args.boundary)
    except (FairseqLiteError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with open(args.output, "w", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)
    print(f"wrote {len(lines)} words to {args.output}", file=sys.stderr)
    if skipped:
        print(
            f"left out {len(skipped)} words with letters not in {args.dict}, e.g. {', '.join(skipped[:5])}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
