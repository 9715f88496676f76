"""Small text and seeding helpers shared by the data pipeline, the CTC criterion, training and inference."""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Iterable, Iterator, Optional

import numpy as np

from fairseq_lite.errors import ConfigError


def derived_seed(words: Iterable[int]) -> int:
    """A 64-bit seed mixed from integers (numpy's ``SeedSequence``): the same words give the same seed anywhere."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0])


#: numpy's global RNG is one per process; numpy_seed blocks of different threads take turns
_NUMPY_SEED_LOCK = threading.RLock()


@contextlib.contextmanager
def numpy_seed(seed: Optional[int]) -> Iterator[None]:
    """Seed numpy's global RNG for a block and restore its state after (fairseq's ``numpy_seed``). One thread at a
    time: XLA replicas may be threads of one process (torch-xla's CPU client, TPU v2/v3)."""
    if seed is None:
        yield
        return
    with _NUMPY_SEED_LOCK:
        state = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)


#: ``--post-process`` choices that glue sub-word units back into words: unit separator → word separator.
GLUE_SYMBOLS = {
    "letter": "|",
    "sentencepiece": "\u2581",
    "wordpiece": "_",
    "_EOW": "_EOW",
}

#: ``--post-process`` choices that strip a continuation marker (subword-nmt's ``@@``).
CONTINUATION_SYMBOLS = {"subword_nmt": "@@ ", "@@ ": "@@ ", "@@": "@@"}

POST_PROCESS_CHOICES = ("none", "silence", *GLUE_SYMBOLS, *CONTINUATION_SYMBOLS)


def post_process(sentence: str, symbol: Optional[str]) -> str:
    """Turn a space-separated unit string into words (fairseq's ``data_utils.post_process``).

    ``symbol`` is the ``--post-process`` / ``eval_wer_post_process`` value: ``letter`` turns
    ``H E L L O | W O R L D |`` into ``HELLO WORLD``; ``sentencepiece`` and ``wordpiece`` do the same
    with ``▁`` and ``_``; ``_EOW`` with an end-of-word marker; ``subword_nmt``/``@@ `` removes
    continuation markers; ``silence`` drops ``<SIL>`` tokens; ``none`` or None leaves the text as is.
    """
    if symbol is None or symbol == "none":
        return sentence
    if symbol in GLUE_SYMBOLS:
        return sentence.replace(" ", "").replace(GLUE_SYMBOLS[symbol], " ").strip()
    if symbol in CONTINUATION_SYMBOLS:
        return (sentence + " ").replace(CONTINUATION_SYMBOLS[symbol], "").rstrip()
    if symbol == "silence":
        return re.sub(" +", " ", sentence.replace("<SIL>", "")).strip()
    raise ConfigError(f"unknown post_process '{symbol}': choose one of {', '.join(POST_PROCESS_CHOICES)}")
