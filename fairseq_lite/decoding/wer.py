"""Word and unit error counting shared by ``infer`` (the ``WER:`` line) and the ``ctc`` criterion.

fairseq reports ``WER = 100 · Σ word edit distance / Σ reference words`` over a whole subset (not the
mean of per-utterance rates), and the ``ctc`` criterion logs the same sums for units (``c_errors``,
``c_total``) and words (``w_errors``, ``w_total``). ``ErrorCounter`` keeps those sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import editdistance


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance between two sequences of hashable items (words, units or ids)."""
    return editdistance.eval(list(reference), list(hypothesis))


@dataclass
class ErrorCounter:
    """Summed word and unit errors over utterances, as fairseq's infer.py and ``ctc`` criterion count them."""

    word_errors: int = 0
    word_total: int = 0
    unit_errors: int = 0
    unit_total: int = 0

    def add(self, ref_words: str, hyp_words: str, ref_units: Sequence = (), hyp_units: Sequence = ()) -> None:
        """Count one utterance: words are whitespace-split strings; units are any sequences (ids or symbols)."""
        ref, hyp = ref_words.split(), hyp_words.split()
        self.word_errors += edit_distance(ref, hyp)
        self.word_total += len(ref)
        self.unit_errors += edit_distance(ref_units, hyp_units)
        self.unit_total += len(ref_units)

    @property
    def wer(self) -> float:
        """Word error rate in percent (0 when there are no reference words, as fairseq prints it)."""
        return 100.0 * self.word_errors / self.word_total if self.word_total else 0.0

    @property
    def uer(self) -> float:
        """Unit (letter) error rate in percent."""
        return 100.0 * self.unit_errors / self.unit_total if self.unit_total else 0.0


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER in percent of a list of reference and hypothesis sentences."""
    counter = ErrorCounter()
    for ref, hyp in zip(references, hypotheses, strict=True):
        counter.add(ref, hyp)
    return counter.wer
