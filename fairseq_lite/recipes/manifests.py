"""The fairseq data folder a recipe trains on: fairseq2's ``{split}.tsv`` + ``{split}.wrd`` manifests.

The ASR recipe reads words (``.wrd``), as fairseq2 does; its character tokenizer spells them letter by letter
with a word boundary, which is fairseq's ``.ltr`` (``libri_labels.py``: ``H E L L O | W O R L D |``). So each
split's ``.ltr`` is derived from its ``.wrd`` into ``OUTPUT_DIR/data``, next to a link to its ``.tsv``; the
user's manifest folder is only read.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterable, Optional

from fairseq_lite.data.labels import dictionary_from_labels, letters, write_label_files
from fairseq_lite.data.manifest import read_utf8_lines
from fairseq_lite.errors import DataError
from fairseq_lite.file_io import temp_path_for


def split_names(text: Optional[str]) -> list:
    """fairseq2's comma list of splits (``'valid,test_clean'``)."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def require_split(manifest_dir: str, split: str, ext: str, key: str) -> str:
    """``{manifest_dir}/{split}.{ext}``, or a DataError naming the split's recipe key."""
    path = os.path.join(manifest_dir, f"{split}.{ext}")
    if not os.path.isfile(path):
        found = sorted(n[:-4] for n in os.listdir(manifest_dir) if n.endswith(".tsv"))
        raise DataError(f"{key} '{split}': {path} does not exist (splits with a .tsv in {manifest_dir}: "
                        f"{', '.join(found) or 'none'})")
    return path


def _link(src: str, dst: str) -> None:
    """``dst`` → ``src`` as a symbolic link (a copy where links are not allowed), replacing ``dst`` at once."""
    tmp = temp_path_for(dst)
    try:
        os.symlink(os.path.abspath(src), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prepare_asr_data(manifest_dir: str, splits: Iterable[str], out_dir: str, dict_split: Optional[str],
                     key: str = "dataset.valid_split") -> str:
    """``out_dir`` holding ``{split}.tsv`` (linked), ``{split}.wrd`` and ``{split}.ltr`` of every split, and
    ``dict.ltr.txt``: the manifest folder's, else counted from ``dict_split``'s letters (None: no dictionary
    is written, an evaluated checkpoint has its own)."""
    os.makedirs(out_dir, exist_ok=True)
    ltr_lines = {}
    for split in splits:
        tsv = require_split(manifest_dir, split, "tsv", key)
        wrd = require_split(manifest_dir, split, "wrd", key)
        texts = [" ".join(line.split()) for line in read_utf8_lines(wrd, "word label file")]
        _link(tsv, os.path.join(out_dir, f"{split}.tsv"))
        write_label_files(texts, out_dir, split)
        ltr_lines[split] = [letters(text) for text in texts]
    dict_path = os.path.join(out_dir, "dict.ltr.txt")
    given = os.path.join(manifest_dir, "dict.ltr.txt")
    if os.path.isfile(given):
        _link(given, dict_path)
    elif dict_split is not None:
        if not ltr_lines.get(dict_split):
            raise DataError(f"dataset.train_split '{dict_split}' has no transcripts to count letters from")
        tmp = temp_path_for(dict_path)
        dictionary_from_labels(ltr_lines[dict_split]).save(tmp)
        os.replace(tmp, dict_path)
    return out_dir
