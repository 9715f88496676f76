"""The ``ctc`` criterion (fairseq's ``criterions/ctc.py``): summed CTC loss, and error rates in validation.

In validation every utterance is also decoded greedily (the batched ``ViterbiDecoder``) for the unit error
rate ``uer`` and the word error rate ``raw_wer``; ``wer`` is the same as ``raw_wer`` unless a KenLM is
configured (``wer_kenlm_model`` + ``wer_lexicon``, or the older ``wer_args`` tuple), in which case the
flashlight lexicon decoder of ``fairseq_lite.decoding`` supplies the words, as fairseq's validation does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from fairseq_lite.criterions import register_criterion
from fairseq_lite.criterions.fairseq_criterion import FairseqCriterion
from fairseq_lite.data.data_utils import post_process as apply_post_process
from fairseq_lite.dataclass import FairseqDataclass, help_text, II, safe_eval
from fairseq_lite.decoding import ViterbiDecoder, build_decoder, edit_distance
from fairseq_lite.errors import ConfigError
from fairseq_lite.modules.static_shapes import is_xla_tensor



@dataclass
class CtcCriterionConfig(FairseqDataclass):
    """fairseq's ``CtcCriterionConfig``."""

    zero_infinity: bool = field(default=False, metadata=help_text("zero inf loss when source length <= target length"))
    sentence_avg: bool = II("optimization.sentence_avg")
    post_process: str = field(default="letter", metadata=help_text(
        "how to post process predictions into words. can be letter, wordpiece, BPE symbols, etc. "
        "See fairseq.data.data_utils.post_process() for full list of options"))
    wer_kenlm_model: Optional[str] = field(default=None, metadata=help_text(
        "if this is provided, use kenlm to compute wer (along with other wer_* args)"))
    wer_lexicon: Optional[str] = field(default=None, metadata=help_text("lexicon to use with wer_kenlm_model"))
    wer_lm_weight: float = field(default=2.0, metadata=help_text("lm weight to use with wer_kenlm_model"))
    wer_word_score: float = field(default=-1.0, metadata=help_text("lm word score to use with wer_kenlm_model"))
    wer_sil_weight: float = field(default=0, metadata=help_text("lm sil weight to use with wer_kenlm_model"))
    wer_args: Optional[str] = field(default=None, metadata=help_text(
        "DEPRECATED: tuple of (wer_kenlm_model, wer_lexicon, wer_lm_weight, wer_word_score)"))


@register_criterion("ctc", dataclass=CtcCriterionConfig)
class CtcCriterion(FairseqCriterion):
    """CTC loss summed over the batch; ``sample_size`` is sentences (``sentence_avg``) or target tokens."""

    def __init__(self, cfg: CtcCriterionConfig, task: Any, rdrop_alpha: float = 0.0):
        super().__init__(task)
        if rdrop_alpha:
            raise ConfigError("criterion rdrop_alpha (R-Drop) is not supported by fairseq_lite: leave it at 0")
        dictionary = task.target_dictionary
        if dictionary is None:
            raise ConfigError("the ctc criterion needs a target dictionary: use task._name=audio_finetuning with task.labels")
        self.dictionary = dictionary
        self.blank_idx = dictionary.index(task.blank_symbol) if hasattr(task, "blank_symbol") else dictionary.bos()
        self.pad_idx = dictionary.pad()
        self.eos_idx = dictionary.eos()
        self.post_process = cfg.post_process
        self.zero_infinity = cfg.zero_infinity
        self.sentence_avg = cfg.sentence_avg
        self.greedy = ViterbiDecoder(dictionary)
        self.w2l_decoder = self._build_kenlm_decoder(cfg)

    def _build_kenlm_decoder(self, cfg: CtcCriterionConfig):
        """The flashlight KenLM lexicon decoder for validation WER, as fairseq configures it; None without an LM."""
        kenlm, lexicon, lm_weight, word_score = (cfg.wer_kenlm_model, cfg.wer_lexicon, cfg.wer_lm_weight,
                                                 cfg.wer_word_score)
        if cfg.wer_args is not None:
            values = safe_eval(cfg.wer_args)
            if not isinstance(values, tuple) or len(values) != 4:
                raise ConfigError(f"criterion.wer_args must be a tuple (kenlm, lexicon, lm_weight, word_score), "
                                  f"got {cfg.wer_args!r}")
            kenlm, lexicon, lm_weight, word_score = values
        if not kenlm:
            return None
        if not lexicon:
            raise ConfigError("criterion.wer_kenlm_model needs criterion.wer_lexicon (a flashlight lexicon file)")
        from fairseq_lite.decoding.flashlight import DecoderConfig

        width = min(50, len(self.dictionary))
        decoder_cfg = DecoderConfig(beam=50, beam_size_token=width, beam_threshold=width, lm_weight=float(lm_weight),
                                    word_score=float(word_score), unk_weight=-math.inf, sil_weight=0.0,
                                    lexicon=lexicon, kenlm_model=kenlm)
        return build_decoder("kenlm", self.dictionary, decoder_cfg)

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True).contiguous()  # T×B×V
        input_lengths = self._input_lengths(sample, net_output, lprobs)
        target = sample["target"]
        keep = (target != self.pad_idx) & (target != self.eos_idx)
        target_lengths = sample.get("target_lengths")
        if target_lengths is None:
            target_lengths = keep.sum(-1)
        on_xla = is_xla_tensor(lprobs)
        # on XLA the padded B×S targets (static shape; ctc_loss reads the first target_lengths of each row)
        # instead of the packed ones, whose size masked_select reads back from the device
        targets = target if on_xla else target.masked_select(keep)
        with torch.backends.cudnn.flags(enabled=False):
            loss = F.ctc_loss(lprobs, targets, input_lengths, target_lengths, blank=self.blank_idx,
                              reduction="sum", zero_infinity=self.zero_infinity)
        ntokens = sample["ntokens"] if "ntokens" in sample else int(target_lengths.sum())
        sample_size = target.size(0) if self.sentence_avg else ntokens
        logging_output: Dict[str, Any] = {
            "loss": loss.detach() if on_xla else loss.item(),  # XLA: read when the trainer logs
            "ntokens": ntokens,
            "nsentences": sample["id"].numel() if "id" in sample else target.size(0),
            "sample_size": sample_size,
        }
        if not model.training:
            with torch.no_grad():
                logging_output.update(self._error_counts(lprobs.transpose(0, 1).float(), input_lengths, target, keep))
        return loss, sample_size, logging_output

    @staticmethod
    def _input_lengths(sample: Dict[str, Any], net_output: Dict[str, Any], lprobs: torch.Tensor) -> torch.Tensor:
        """Valid frames per utterance: ``src_lengths`` if given, else from the padding mask, else all frames."""
        if "src_lengths" in sample["net_input"]:
            return sample["net_input"]["src_lengths"]
        padding = net_output.get("padding_mask")
        if padding is not None:
            return (~padding).long().sum(-1)
        return lprobs.new_full((lprobs.size(1),), lprobs.size(0), dtype=torch.long)

    def _error_counts(self, lprobs: torch.Tensor, input_lengths: torch.Tensor, target: torch.Tensor,
                      keep: torch.Tensor) -> Dict[str, int]:
        """Greedy unit/word errors and (with a KenLM) decoder word errors over a B×T×V batch."""
        greedy = self.greedy.decode(lprobs, input_lengths)
        lm_words = self.w2l_decoder.decode(lprobs, input_lengths) if self.w2l_decoder is not None else None
        counts = {"c_errors": 0, "c_total": 0, "w_errors": 0, "wv_errors": 0, "w_total": 0}
        for i, hypos in enumerate(greedy):
            ref_units = target[i][keep[i]].tolist()
            hyp_units = hypos[0].tokens.tolist()
            counts["c_errors"] += edit_distance(ref_units, hyp_units)
            counts["c_total"] += len(ref_units)
            ref_words = self.dictionary.string(ref_units, self.post_process).split()
            raw_words = self.dictionary.string(hyp_units, self.post_process).split()
            raw_errors = edit_distance(ref_words, raw_words)
            counts["wv_errors"] += raw_errors
            if lm_words is not None:
                counts["w_errors"] += edit_distance(ref_words, lm_words[i][0].words or [])
            else:
                counts["w_errors"] += raw_errors
            counts["w_total"] += len(ref_words)
        return counts

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        """``loss`` in bits per sample_size (``nll_loss`` per token when they differ); ``uer``, ``wer`` and
        ``raw_wer`` in percent of the summed counts (NaN when the subset has no reference units/words)."""
        def total(key: str) -> float:
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size, ntokens = total("sample_size"), total("ntokens")
        metrics = {
            "loss": round(total("loss") / (sample_size or 1.0) / math.log(2), 3),
            "ntokens": ntokens,
            "nsentences": total("nsentences"),
            "sample_size": sample_size,
        }
        if sample_size != ntokens:
            metrics["nll_loss"] = round(total("loss") / (ntokens or 1.0) / math.log(2), 3)
        if any("c_total" in log for log in logging_outputs):
            c_total, w_total = total("c_total"), total("w_total")
            metrics["uer"] = round(100 * total("c_errors") / c_total, 3) if c_total else float("nan")
            metrics["wer"] = round(100 * total("w_errors") / w_total, 3) if w_total else float("nan")
            metrics["raw_wer"] = round(100 * total("wv_errors") / w_total, 3) if w_total else float("nan")
        return metrics

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
