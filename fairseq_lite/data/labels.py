"""Label files for fine-tuning: ``.wrd`` (words), ``.ltr`` (letters) and ``dict.ltr.txt``.

``.ltr`` is fairseq's letter format: every character separated by a space, word boundaries as ``|``,
and a trailing `` |`` (``HELLO WORLD`` → ``H E L L O | W O R L D |``). Line i of a label file belongs
to line i+1 of the manifest (after the root line).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.manifest import read_utf8_lines
from fairseq_lite.errors import DataError
from fairseq_lite.file_io import AtomicOutputs

WORD_SEPARATOR = "|"


def letters(text: str) -> str:
    """The ``.ltr`` line of a transcript (fairseq's ``libri_labels.py`` rule)."""
    return " ".join(text.replace(" ", WORD_SEPARATOR)) + " " + WORD_SEPARATOR


def manifest_entries(tsv: str) -> Tuple[str, List[Tuple[int, str]]]:
    """(root, [(file line number, relative path), ...]) of a manifest, without touching the audio."""
    root, *lines = read_utf8_lines(tsv, "manifest") or [""]
    return root, [(n, line.split("\t")[0]) for n, line in enumerate(lines, start=2) if line.strip()]


def read_libri_transcripts(path: str) -> Dict[str, str]:
    """utterance id → text of a LibriSpeech ``<speaker>-<chapter>.trans.txt`` (``<id> <WORDS ...>`` lines)."""
    table: Dict[str, str] = {}
    for n, line in enumerate(read_utf8_lines(path, "transcript file"), start=1):
        fields = line.split()
        if len(fields) == 1:
            raise DataError(f"{path}:{n}: utterance {fields[0]} has no text: expected '<utterance id> <WORDS ...>'")
        if fields:
            table[fields[0]] = " ".join(fields[1:])
    return table


def libri_transcripts(tsv: str) -> List[str]:
    """One LibriSpeech transcript per manifest entry, from the ``<speaker>-<chapter>.trans.txt`` beside it."""
    root, entries = manifest_entries(tsv)
    cache: Dict[str, Dict[str, str]] = {}
    texts = []
    for lineno, rel in entries:
        parts = rel.split(os.path.sep)
        if len(parts) < 3:
            raise DataError(f"{tsv}:{lineno}: {rel} is not in LibriSpeech's <speaker>/<chapter>/ layout")
        trans_path = os.path.join(root, os.path.dirname(rel), f"{parts[-3]}-{parts[-2]}.trans.txt")
        if trans_path not in cache:
            if not os.path.exists(trans_path):
                raise DataError(f"{tsv}:{lineno}: transcript file {trans_path} does not exist")
            cache[trans_path] = read_libri_transcripts(trans_path)
        utt = os.path.basename(rel).split(".")[0]
        if utt not in cache[trans_path]:
            raise DataError(f"{tsv}:{lineno}: utterance {utt} is not in {trans_path}")
        texts.append(cache[trans_path][utt])
    return texts


def normalize_text(text: str, case: str = "keep", remove_punctuation: bool = False) -> str:
    """Collapse whitespace; optionally change case and drop punctuation (apostrophes kept)."""
    text = unicodedata.normalize("NFC", text)
    if case == "upper":
        text = text.upper()
    elif case == "lower":
        text = text.lower()
    if remove_punctuation:
        text = "".join(c for c in text if c == "'" or not unicodedata.category(c).startswith(("P", "S")))
    return re.sub(r"\s+", " ", text).strip()


def corpus_transcripts(
    tsv: str,
    transcripts: Optional[str] = None,
    sidecar_ext: Optional[str] = None,
    normalize: Callable[[str], str] = normalize_text,
) -> List[str]:
    """One transcript per manifest entry, for any corpus.

    From ``transcripts``, a text file of ``<key> <text>`` lines (tab or first space) whose key is the
    entry's relative path, that path without extension, or its file name without extension; or from
    a ``<audio stem>.<sidecar_ext>`` file beside each audio file.
    """
    if (transcripts is None) == (sidecar_ext is None):
        raise DataError("give exactly one of --transcripts FILE and --sidecar-ext EXT")
    root, entries = manifest_entries(tsv)
    table: Dict[str, str] = {}
    if transcripts is not None:
        for n, line in enumerate(read_utf8_lines(transcripts, "transcript file"), start=1):
            if not line.strip():
                continue
            key, _, text = line.partition("\t") if "\t" in line else line.partition(" ")
            if key in table:
                raise DataError(f"{transcripts}:{n}: key {key!r} appears twice")
            table[key] = text
    texts = []
    for lineno, rel in entries:
        if transcripts is not None:
            stem = os.path.splitext(rel)[0]
            keys = (rel, stem, os.path.basename(stem))
            found = next((table[k] for k in keys if k in table), None)
            if found is None:
                raise DataError(f"{tsv}:{lineno}: no transcript for {rel} in {transcripts} (looked up {', '.join(keys)})")
        else:
            side = os.path.join(root, os.path.splitext(rel)[0] + "." + sidecar_ext.lstrip("."))
            if not os.path.exists(side):
                raise DataError(f"{tsv}:{lineno}: transcript file {side} does not exist")
            found = "\n".join(read_utf8_lines(side, "transcript file"))
        text = normalize(found)
        if WORD_SEPARATOR in text:
            raise DataError(f"{tsv}:{lineno}: the transcript of {rel} contains '|', the word separator of .ltr files")
        if not text:
            raise DataError(f"{tsv}:{lineno}: the transcript of {rel} is empty")
        texts.append(text)
    return texts


def write_label_files(texts: Iterable[str], output_dir: str, output_name: str) -> Tuple[str, str]:
    """Write ``{output_name}.wrd`` and ``{output_name}.ltr`` (both replace the old files only once complete);
    returns their paths."""
    wrd_path = os.path.join(output_dir, f"{output_name}.wrd")
    ltr_path = os.path.join(output_dir, f"{output_name}.ltr")
    with AtomicOutputs() as outputs:
        wrd = outputs.open(wrd_path, "w", encoding="utf-8")
        ltr = outputs.open(ltr_path, "w", encoding="utf-8")
        for text in texts:
            print(text, file=wrd)
            print(letters(text), file=ltr)
    return wrd_path, ltr_path


def dictionary_from_labels(label_lines: Iterable[str]) -> Dictionary:
    """A Dictionary of every symbol in ``label_lines``, most frequent first (ties by symbol), as dict.ltr.txt is."""
    counts = Counter(symbol for line in label_lines for symbol in line.split())
    d = Dictionary()
    for symbol, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        d.add_symbol(symbol, n=count)
    return d
