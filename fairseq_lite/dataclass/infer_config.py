"""The config of fairseq's Hydra decoding entry point ``examples/speech_recognition/new/infer.py``.

``InferConfig`` is the whole config with the ``decoding`` group added: fairseq's ``DecodingConfig``, which
joins ``DecoderConfig`` (``type``) and ``FlashlightDecoderConfig`` (beam search and LM weights) with
``unique_wer_file`` and ``results_path``. The field names, defaults and their order are fairseq 0.12.2's, so
``OmegaConf.to_yaml(cfg.decoding)`` (written into the WER file and hashed for ``unique_wer_file``) is the
same text. fairseq's ``lmpath`` defaults to ``???``; here it is None, and ``type=kenlm`` / ``fairseqlm``
without it is an error naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from fairseq_lite.dataclass.configs import FairseqConfig, FairseqDataclass, help_text
from fairseq_lite.dataclass.utils import closest_match
from fairseq_lite.errors import ConfigError

#: fairseq's DECODER_CHOICES (``decoding.type``)
DECODING_TYPES = ("viterbi", "kenlm", "fairseqlm")


@dataclass
class DecodingConfig(FairseqDataclass):
    """fairseq's ``decoding`` group, fields in fairseq's order (FlashlightDecoderConfig's, then ``type``)."""

    nbest: int = field(default=1, metadata=help_text("Number of decodings to return"))
    unitlm: bool = field(default=False, metadata=help_text("If set, use unit language model"))
    lmpath: Optional[str] = field(default=None, metadata=help_text("Language model for KenLM decoder"))
    lexicon: Optional[str] = field(default=None, metadata=help_text("Lexicon for Flashlight decoder"))
    beam: int = field(default=50, metadata=help_text("Number of beams to use for decoding"))
    beamthreshold: float = field(default=50.0, metadata=help_text("Threshold for beam search decoding"))
    beamsizetoken: Optional[int] = field(default=None, metadata=help_text("Beam size to use"))
    wordscore: float = field(default=-1.0, metadata=help_text("Word score for KenLM decoder"))
    unkweight: float = field(default=-math.inf, metadata=help_text("Unknown weight for KenLM decoder"))
    silweight: float = field(default=0.0, metadata=help_text("Silence weight for KenLM decoder"))
    lmweight: float = field(default=2.0, metadata=help_text("Weight for LM while interpolating score"))
    type: str = field(default="viterbi", metadata=help_text("The type of decoder to use"))
    unique_wer_file: bool = field(default=False, metadata=help_text("If set, use a unique file for storing WER"))
    results_path: Optional[str] = field(
        default=None, metadata=help_text("If set, write hypothesis and reference sentences into this directory"))

    def check_values(self, cfg=None) -> None:
        """A decoder type fairseq has, counts that are positive, and what beam search needs (fairseq asserts
        or fails inside flashlight instead)."""
        if self.type not in DECODING_TYPES:
            close = closest_match(str(self.type), DECODING_TYPES)
            hint = f"did you mean '{close}'? " if close else ""
            raise ConfigError(f"unknown decoding.type '{self.type}': {hint}choose one of {', '.join(DECODING_TYPES)}")
        for key in ("nbest", "beam", "beamsizetoken"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"decoding.{key} must be a positive number, got {value}")
        if self.type == "viterbi":
            return
        if not self.lmpath:
            what = "an ARPA or KenLM binary file" if self.type == "kenlm" else "a fairseq language model checkpoint"
            raise ConfigError(f"decoding.type={self.type} needs decoding.lmpath=<{what}>")
        if not self.lexicon and not self.unitlm:
            raise ConfigError(f"decoding.type={self.type} needs decoding.lexicon=<lexicon file> (WORD<TAB>W O R D | per "
                              "line) for a word LM, or decoding.unitlm=true for an LM over the output units")


@dataclass
class InferConfig(FairseqConfig):
    """fairseq's ``InferConfig``: the usual groups plus ``decoding`` and ``is_ax``; ``lang`` is fairseq_lite's."""

    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    is_ax: bool = field(default=False, metadata=help_text(
        "if true, assumes we are using ax for tuning and returns a tuple for ax to consume"))
    lang: Optional[str] = field(default=None, metadata=help_text(
        "MMS: decode dataset.gen_subset as this language (fairseq_lite's; fairseq writes dataset.gen_subset=eng:dev)"))
