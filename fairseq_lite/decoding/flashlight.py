"""Beam-search CTC decoding with flashlight-text (fairseq's ``--w2l-decoder kenlm`` and ``fairseqlm``).

* ``kenlm`` with ``--lexicon``: flashlight's ``LexiconDecoder`` over a trie of the lexicon's spellings,
  each word weighted by its KenLM unigram score and smeared with MAX, as fairseq's ``W2lKenLMDecoder``.
* ``kenlm`` with ``--unit-lm`` and no lexicon: ``LexiconFreeDecoder`` with a KenLM over the output units.
  The LM's token table keeps the target dictionary's order; fairseq builds it with ``create_word_dict``,
  which scrambles the order, so its unit LM scores the wrong letters and has no effect.
* ``fairseqlm``: the same decoders with a fairseq language model (``transformer_lm``) wrapped as a
  flashlight ``LM`` whose states are token prefixes, with their next-token log-probabilities cached.

Lexicons are read and checked here, before anything reaches C++: a line without a spelling or a
spelling with a unit that is not in the target dictionary raises a ``DataError`` naming the word.
Decoding runs over utterances in threads (flashlight releases the GIL while decoding), one flashlight
decoder per thread sharing the LM and the trie.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from fairseq_lite.decoding.hypotheses import Hypothesis, blank_index, collapse_path, silence_index
from fairseq_lite.errors import ConfigError, DataError, FairseqLiteError

try:
    from flashlight.lib.text.decoder import (
        LM,
        CriterionType,
        LexiconDecoder,
        LexiconDecoderOptions,
        LexiconFreeDecoder,
        LexiconFreeDecoderOptions,
        LMState,
        SmearingMode,
        Trie,
    )
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary as TokenTable
except ImportError as err:  # pragma: no cover - exercised by a test that hides the package
    raise FairseqLiteError(
        f"beam-search decoding (--w2l-decoder kenlm/fairseqlm) needs flashlight-text ({err}): "
        "pip install fairseq_lite[decode], or use --w2l-decoder viterbi"
    ) from err


@dataclass
class DecoderConfig:
    """fairseq infer.py's decoding flags, with the defaults fairseq actually applies.

    ``lm_weight`` defaults to 0.0 because fairseq's GenerationConfig shadows the script's 0.2.
    ``kenlm_model`` is also the path of the ``fairseqlm`` checkpoint (fairseq's ``--lm-model`` alias).
    """

    nbest: int = 1
    beam: int = 5
    beam_threshold: float = 25.0
    beam_size_token: int = 100
    lm_weight: float = 0.0
    word_score: float = 1.0
    unk_weight: float = -math.inf
    sil_weight: float = 0.0
    lexicon: Optional[str] = None
    kenlm_model: Optional[str] = None
    unit_lm: bool = False


# -- lexicon ----------------------------------------------------------------------------------


def load_lexicon(path: str, tgt_dict) -> Dict[str, List[List[int]]]:
    """Read a flashlight lexicon (``WORD<TAB>S P E L L I N G |`` per line) as word → spellings as unit ids.

    Several lines for one word are alternative spellings; blank lines are skipped. A line without
    a spelling, or a spelling unit missing from ``tgt_dict``, raises ``DataError`` with file, line
    and word, because flashlight itself would fail with "Invalid line" or crash in the trie.
    """
    if not os.path.isfile(path):
        raise DataError(f"lexicon {path} does not exist: write one with scripts/make_lexicon.py")
    lexicon: Dict[str, List[List[int]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            word, _, spelling = line.partition("\t") if "\t" in line else line.strip().partition(" ")
            word, units = word.strip(), spelling.split()
            if not word or not units:
                raise DataError(
                    f"{path}:{lineno}: word {word or line!r} has no spelling; "
                    "each line must be WORD<TAB>S P E L L I N G |"
                )
            unknown = [u for u in units if u not in tgt_dict]
            if unknown:
                raise DataError(
                    f"{path}:{lineno}: word {word!r} is spelled with {' '.join(unknown)!r}, not in the target "
                    f"dictionary; rebuild the lexicon for this dictionary (scripts/make_lexicon.py)"
                )
            lexicon.setdefault(word, []).append([tgt_dict.index(u) for u in units])
    if not lexicon:
        raise DataError(f"lexicon {path} has no entries")
    return lexicon


def _table(symbols: Sequence[str]) -> "TokenTable":
    """A flashlight Dictionary that keeps ``symbols`` in order (index i ↔ symbols[i])."""
    return TokenTable(list(symbols))


def _load_kenlm(path: Optional[str], table: "TokenTable") -> "KenLM":
    if not path:
        raise ConfigError("--w2l-decoder kenlm needs --kenlm-model (an ARPA or KenLM binary file)")
    if not os.path.isfile(path):
        raise DataError(f"KenLM model {path} does not exist: build one with scripts/build_kenlm.sh")
    try:
        return KenLM(path, table)
    except RuntimeError as err:
        raise DataError(f"KenLM could not read {path}: {err}") from err


# -- fairseq language model as a flashlight LM -------------------------------------------------


class FairseqLM(LM):
    """A fairseq LM (``transformer_lm``) behind flashlight's ``LM`` interface (fairseq's ``FairseqLM``).

    A state stands for a prefix of LM-dictionary ids that starts with eos (fairseq's sentence start);
    ``score`` returns the natural-log probability of the next symbol. Next-symbol distributions are
    cached per prefix, at most ``max_cache`` of them (fairseq keeps 20k states). ``symbols`` are the
    decoder's entries (lexicon words or units) in index order; ones the LM does not know map to its unk.

    The decoder holds only a C++ reference to this object: whoever builds the decoder must keep the
    Python object alive, or flashlight calls a destroyed override (flashlight pitfall 2).
    """

    def __init__(self, model: torch.nn.Module, lm_dict, symbols: Sequence[str], max_cache: int = 20000):
        LM.__init__(self)
        self.model = model.eval()
        self.lm_dict = lm_dict
        self.to_lm = [lm_dict.index(symbol) for symbol in symbols]
        self.max_cache = max_cache
        self.prefixes: Dict[LMState, Tuple[int, ...]] = {}
        self.log_probs: "OrderedDict[Tuple[int, ...], torch.Tensor]" = OrderedDict()

    def reset(self) -> None:
        """Forget the states of the previous utterance (the probability cache is kept)."""
        self.prefixes = {}

    def _next_log_probs(self, prefix: Tuple[int, ...]) -> torch.Tensor:
        cached = self.log_probs.get(prefix)
        if cached is not None:
            self.log_probs.move_to_end(prefix)
            return cached
        with torch.inference_mode():
            tokens = torch.tensor([prefix], dtype=torch.long)
            net_output = self.model(tokens)
            lprobs = self.model.get_normalized_probs(net_output, log_probs=True)[0, -1].float()
        self.log_probs[prefix] = lprobs
        if len(self.log_probs) > self.max_cache:
            self.log_probs.popitem(last=False)
        return lprobs

    def _step(self, state: "LMState", lm_index: int, child_key: int) -> Tuple["LMState", float]:
        prefix = self.prefixes[state]
        score = float(self._next_log_probs(prefix)[lm_index])
        child = state.child(child_key)
        self.prefixes.setdefault(child, prefix + (lm_index,))
        return child, score

    def start(self, start_with_nothing: bool) -> "LMState":
        state = LMState()
        self.prefixes[state] = (self.lm_dict.eos(),)
        return state

    def score(self, state: "LMState", index: int) -> Tuple["LMState", float]:
        return self._step(state, self.to_lm[index], index)

    def finish(self, state: "LMState") -> Tuple["LMState", float]:
        return self._step(state, self.lm_dict.eos(), -1)


# -- decoders ---------------------------------------------------------------------------------


class FlashlightDecoder:
    """Shared part of the flashlight decoders: options, the trie, batch decoding into hypotheses.

    Subclasses set ``self.lm`` and, for lexicon decoding, ``self.lexicon`` before calling
    ``_setup()``. ``decode`` takes (B, T, V) emissions (fairseq feeds the model's raw CTC logits).
    """

    lm: "LM"
    lexicon: Optional[Dict[str, List[List[int]]]]
    word_table: Optional["TokenTable"]
    #: flashlight decoders release the GIL in C++; a Python LM does not, so subclasses may say no.
    thread_safe: bool = True

    def __init__(self, tgt_dict, cfg: DecoderConfig):
        self.tgt_dict = tgt_dict
        self.cfg = cfg
        self.vocab_size = len(tgt_dict)
        self.blank = blank_index(tgt_dict)
        self.silence = silence_index(tgt_dict)
        self.unit_table = _table(tgt_dict.symbols)
        self.lexicon = None
        self.word_table = None
        self._local = threading.local()

    def _setup(self, unit_lm: bool) -> None:
        """Build the trie (lexicon decoding) once; decoders themselves are made per thread."""
        self.unit_lm = unit_lm
        self.trie = None
        if self.lexicon is None:
            return
        self.trie = Trie(self.vocab_size, self.silence)
        start = self.lm.start(False)
        for word, spellings in self.lexicon.items():
            word_index = self.word_table.get_index(word)
            # fairseq smears each word's unigram score over its spelling prefixes; with a unit LM
            # the LM scores units as they are emitted and the trie only constrains the spellings.
            score = 0.0 if unit_lm else self.lm.score(start, word_index)[1]
            for spelling in spellings:
                self.trie.insert(spelling, word_index, score)
        self.trie.smear(SmearingMode.MAX)

    def _new_decoder(self):
        cfg = self.cfg
        if self.trie is not None:
            options = LexiconDecoderOptions(
                beam_size=cfg.beam,
                beam_size_token=cfg.beam_size_token,
                beam_threshold=cfg.beam_threshold,
                lm_weight=cfg.lm_weight,
                word_score=cfg.word_score,
                unk_score=cfg.unk_weight,
                sil_score=cfg.sil_weight,
                log_add=False,
                criterion_type=CriterionType.CTC,
            )
            unk = self.word_table.get_index("<unk>")
            return LexiconDecoder(options, self.trie, self.lm, self.silence, self.blank, unk, [], self.unit_lm)
        options = LexiconFreeDecoderOptions(
            beam_size=cfg.beam,
            beam_size_token=cfg.beam_size_token,
            beam_threshold=cfg.beam_threshold,
            lm_weight=cfg.lm_weight,
            sil_score=cfg.sil_weight,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        return LexiconFreeDecoder(options, self.lm, self.silence, self.blank, [])

    def _decoder(self):
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = self._local.decoder = self._new_decoder()
        return decoder

    def _decode_one(self, emissions: torch.Tensor, row: int, frames: int) -> List[Hypothesis]:
        if frames == 0:
            return [Hypothesis(tokens=torch.zeros(0, dtype=torch.long), score=0.0, timesteps=[],
                               words=[] if self.word_table is not None else None)]
        pointer = emissions.data_ptr() + row * emissions.stride(0) * emissions.element_size()
        results = self._decoder().decode(pointer, frames, emissions.size(2))
        hypotheses = []
        for result in results[: self.cfg.nbest]:
            # result.tokens has one entry per frame between a leading and a trailing silence.
            units, steps = collapse_path(result.tokens[1 : frames + 1], self.blank)
            words = None
            if self.word_table is not None:
                words = [self.word_table.get_entry(i) for i in result.words if i >= 0]
            hypotheses.append(
                Hypothesis(
                    tokens=torch.tensor(units, dtype=torch.long),
                    score=result.score,
                    timesteps=steps,
                    words=words,
                    lm_score=result.lmScore,
                    am_score=result.emittingModelScore,
                )
            )
        return hypotheses

    def decode(
        self,
        emissions: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        num_workers: int = 1,
        progress: bool = False,
    ) -> List[List[Hypothesis]]:
        """n-best hypotheses per utterance of (B, T, V) emissions; ``lengths`` gives valid frames.

        ``num_workers`` > 1 decodes utterances in that many threads; ``progress`` shows a tqdm bar.
        """
        if emissions.dim() != 3:
            raise ValueError(f"emissions must be (batch, frames, units), got shape {tuple(emissions.shape)}")
        emissions = emissions.detach().to("cpu", torch.float32).contiguous()
        batch, frames, _ = emissions.shape
        lengths_list = [frames] * batch if lengths is None else [int(n) for n in lengths]
        rows = range(batch)
        workers = num_workers if self.thread_safe else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = pool.map(lambda b: self._decode_one(emissions, b, lengths_list[b]), rows)
                return list(_progress(results, batch, progress))
        return [self._decode_one(emissions, b, lengths_list[b]) for b in _progress(rows, batch, progress)]


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="decoding", unit="utt")


class KenLMDecoder(FlashlightDecoder):
    """``--w2l-decoder kenlm``: lexicon decoding with a word KenLM, or lexicon-free with ``--unit-lm``."""

    def __init__(self, tgt_dict, cfg: DecoderConfig):
        super().__init__(tgt_dict, cfg)
        if cfg.lexicon:
            self.lexicon = load_lexicon(cfg.lexicon, tgt_dict)
            self.word_table = _table(_words_with_unk(self.lexicon))
        elif not cfg.unit_lm:
            raise ConfigError(
                "--w2l-decoder kenlm needs --lexicon for a word LM, or --unit-lm for lexicon-free "
                "decoding with an LM over the output units"
            )
        self.lm = _load_kenlm(cfg.kenlm_model, self.unit_table if cfg.unit_lm else self.word_table)
        self._setup(cfg.unit_lm)


class FairseqLMDecoder(FlashlightDecoder):
    """``--w2l-decoder fairseqlm``: the flashlight decoders scored by a fairseq neural LM.

    ``lm_model`` maps (1, L) LM-dictionary ids to a net output that ``get_normalized_probs`` turns
    into (1, L, |lm_dict|) log-probabilities, as fairseq's ``transformer_lm`` does.
    """

    thread_safe = False

    def __init__(self, tgt_dict, cfg: DecoderConfig, lm_model: torch.nn.Module, lm_dict):
        super().__init__(tgt_dict, cfg)
        if cfg.lexicon:
            self.lexicon = load_lexicon(cfg.lexicon, tgt_dict)
            words = _words_with_unk(self.lexicon)
            self.word_table = _table(words)
        elif not cfg.unit_lm:
            raise ConfigError("--w2l-decoder fairseqlm needs --lexicon, or --unit-lm for an LM over the output units")
        symbols = tgt_dict.symbols if cfg.unit_lm else words
        # Kept as an attribute: the C++ decoder does not keep the Python LM alive (flashlight pitfall 2).
        self.lm = FairseqLM(lm_model, lm_dict, symbols)
        self._setup(cfg.unit_lm)

    def _decode_one(self, emissions: torch.Tensor, row: int, frames: int) -> List[Hypothesis]:
        self.lm.reset()
        return super()._decode_one(emissions, row, frames)


def _words_with_unk(lexicon: Dict[str, List[List[int]]]) -> List[str]:
    words = list(lexicon)
    return words if "<unk>" in lexicon else words + ["<unk>"]
