"""CTC decoding for inference (fairseq's ``--w2l-decoder viterbi|kenlm|fairseqlm``) and error counting.

``viterbi`` needs nothing beyond torch; ``kenlm`` and ``fairseqlm`` import flashlight-text only when
they are built, so a missing package gives an install hint at that point and nowhere else.
"""

from __future__ import annotations

from typing import Any

from fairseq_lite.decoding.hypotheses import Hypothesis, WordSpan, blank_index, silence_index, word_spans
from fairseq_lite.decoding.viterbi import ViterbiDecoder
from fairseq_lite.decoding.wer import ErrorCounter, edit_distance, word_error_rate
from fairseq_lite.errors import ConfigError

W2L_DECODER_CHOICES = ("viterbi", "kenlm", "fairseqlm")


def build_decoder(name: str, tgt_dict, cfg: Any = None, lm_model: Any = None, lm_dict: Any = None):
    """The decoder ``--w2l-decoder name`` selects, over the target dictionary ``tgt_dict``.

    ``cfg`` is a ``flashlight.DecoderConfig`` (beam, lexicon, LM path and weights); ``fairseqlm``
    also needs the loaded LM and its dictionary.
    """
    if name == "viterbi":
        return ViterbiDecoder(tgt_dict)
    if name not in W2L_DECODER_CHOICES:
        raise ConfigError(f"unknown --w2l-decoder '{name}': choose one of {', '.join(W2L_DECODER_CHOICES)}")
    from fairseq_lite.decoding import flashlight

    cfg = cfg if cfg is not None else flashlight.DecoderConfig()
    if name == "kenlm":
        return flashlight.KenLMDecoder(tgt_dict, cfg)
    if lm_model is None or lm_dict is None:
        raise ConfigError("--w2l-decoder fairseqlm needs a language model: pass --lm-model <checkpoint>")
    return flashlight.FairseqLMDecoder(tgt_dict, cfg, lm_model, lm_dict)


__all__ = [
    "ErrorCounter",
    "Hypothesis",
    "ViterbiDecoder",
    "W2L_DECODER_CHOICES",
    "WordSpan",
    "blank_index",
    "build_decoder",
    "edit_distance",
    "silence_index",
    "word_error_rate",
    "word_spans",
]
