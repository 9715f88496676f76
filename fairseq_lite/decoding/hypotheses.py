"""What every CTC decoder shares: the blank and silence units, hypotheses, and word timestamps.

fairseq's ``w2l_decoder.py`` picks the blank as ``<ctc_blank>`` when the dictionary has it, else bos
(``<s>``, index 0), and the word boundary ("silence") as ``<sep>``, else ``|``, else eos. A decoded
frame path becomes units by collapsing repeats and then dropping blanks; the frame of the first
frame of each kept run is its timestep, from which word start/end times follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from fairseq_lite.data.data_utils import CONTINUATION_SYMBOLS, GLUE_SYMBOLS

def blank_index(tgt_dict) -> int:
    """The CTC blank: ``<ctc_blank>`` if present, else bos (fairseq's choice)."""
    return tgt_dict.index("<ctc_blank>") if "<ctc_blank>" in tgt_dict else tgt_dict.bos()


def silence_index(tgt_dict) -> int:
    """The word-boundary unit: ``<sep>``, else ``|``, else eos (fairseq's choice)."""
    for symbol in ("<sep>", "|"):
        if symbol in tgt_dict:
            return tgt_dict.index(symbol)
    return tgt_dict.eos()


@dataclass
class Hypothesis:
    """One decoding result, with the fields fairseq's decoders return.

    ``tokens`` are the units after collapsing repeats and dropping blanks, ``timesteps`` the frame
    of each of them, ``words`` the lexicon words (None for decoders without a lexicon).
    """

    tokens: torch.Tensor
    score: float
    timesteps: List[int]
    words: Optional[List[str]] = None
    lm_score: float = 0.0
    am_score: float = 0.0

    def __getitem__(self, key: str):
        """Dict-style access (``hypo["tokens"]``) as fairseq's code reads hypotheses."""
        return getattr(self, key)


def collapse_path(path: Sequence[int], blank: int) -> Tuple[List[int], List[int]]:
    """(units, frames) of a frame-level path: repeats collapsed, blanks dropped, first frame of each run."""
    units, frames = [], []
    previous = None
    for frame, unit in enumerate(path):
        if unit != previous and unit != blank:
            units.append(unit)
            frames.append(frame)
        previous = unit
    return units, frames


@dataclass
class WordSpan:
    """A word with its first frame and the frame after its last unit, and the same in seconds."""

    word: str
    start_frame: int
    end_frame: int
    start: float = 0.0
    end: float = 0.0


@dataclass
class _OpenWord:
    pieces: List[str] = field(default_factory=list)
    start: int = -1
    end: int = -1


def word_spans(
    units: Sequence[str],
    frames: Sequence[int],
    post_process: Optional[str],
    frame_seconds: float,
) -> List[WordSpan]:
    """Group decoded units into words with start/end times, the way ``--post-process`` glues them.

    ``letter``/``sentencepiece``/``wordpiece``/``_EOW`` split words at their boundary symbol,
    ``subword_nmt`` joins units that end in ``@@``, anything else makes every unit a word (``silence``
    drops ``<SIL>``). The words are those ``post_process`` gives for the same units; a word ends at the
    frame after its last unit; ``frame_seconds`` is the model's frame stride in seconds (0.02 for wav2vec 2.0).
    """
    spans: List[WordSpan] = []
    current = _OpenWord()

    def close() -> None:
        nonlocal current
        if current.pieces:
            text = "".join(current.pieces)
            spans.append(WordSpan(text, current.start, current.end, current.start * frame_seconds,
                                  current.end * frame_seconds))
        current = _OpenWord()

    def extend(piece: str, frame: int) -> None:
        if not piece:
            return
        if not current.pieces:
            current.start = frame
        current.pieces.append(piece)
        current.end = frame + 1

    glue = GLUE_SYMBOLS.get(post_process or "none")
    continuation = CONTINUATION_SYMBOLS.get(post_process or "none")
    joins = continuation is not None and continuation.endswith(" ")
    for unit, frame in zip(units, frames, strict=True):
        if glue is not None:
            parts = unit.split(glue)
            extend(parts[0], frame)
            for part in parts[1:]:
                close()
                extend(part, frame)
        elif joins and unit.endswith(continuation.strip()):
            extend(unit[: -len(continuation.strip())], frame)
        elif post_process == "silence" and unit == "<SIL>":
            continue
        else:
            extend(unit.replace(continuation, "") if continuation else unit, frame)
            close()
    close()
    return spans
