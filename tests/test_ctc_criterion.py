"""The ``ctc`` criterion: summed CTC loss and sample sizes, validation unit/word error counts, fairseq's
reduced metrics, and validation WER through a real KenLM (flashlight) lexicon decoder."""

import math

import pytest
import torch
import torch.nn.functional as F

import fairseq_lite  # noqa: F401
from fairseq_lite.criterions import build_criterion
from fairseq_lite.criterions.ctc import CtcCriterion
from fairseq_lite.errors import ConfigError
from decoding_helpers import LEXICON_WORDS, SENTENCE, WORD_ARPA, emissions_for, letter_dictionary, write_lexicon


class Task:
    blank_symbol = "<s>"

    def __init__(self):
        self.target_dictionary = letter_dictionary()


class FixedEmissions(torch.nn.Module):
    """A model whose CTC output is given: (B, T, V) log-probs and valid lengths."""

    def __init__(self, lprobs, lengths):
        super().__init__()
        self.lprobs, self.lengths = lprobs, lengths
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, source, padding_mask=None):
        frames = torch.arange(self.lprobs.size(1))
        padding = frames[None, :] >= self.lengths[:, None]
        return {"encoder_out": (self.lprobs * self.scale).transpose(0, 1), "padding_mask": padding}

    def get_normalized_probs(self, net_output, log_probs):
        return net_output["encoder_out"].float().log_softmax(-1)


def sample_for(sentences, dictionary, eos_in_target=False):
    rows = [dictionary.encode_line(" ".join(s.replace(" ", "|")) + " |").long() for s in sentences]
    if eos_in_target:
        rows = [torch.cat([r, torch.tensor([dictionary.eos()])]) for r in rows]
    target = torch.full((len(rows), max(len(r) for r in rows)), dictionary.pad())
    for i, r in enumerate(rows):
        target[i, : len(r)] = r
    return {"id": torch.arange(len(rows)), "net_input": {"source": torch.zeros(len(rows), 10)}, "target": target}


def criterion(task, **cfg):
    return build_criterion({"_name": "ctc", "sentence_avg": False, **cfg}, task)


def test_loss_is_summed_ctc_over_non_pad_non_eos_targets_and_sample_sizes():
    task = Task()
    d = task.target_dictionary
    sentences = [SENTENCE, "THE DOG"]
    lprobs, lengths = emissions_for(sentences, d, pad_to=50)
    model = FixedEmissions(lprobs, lengths).train()
    sample = sample_for(sentences, d, eos_in_target=True)
    loss, sample_size, log = criterion(task)(model, sample)
    targets = [d.encode_line(" ".join(s.replace(" ", "|")) + " |").long() for s in sentences]
    expected = F.ctc_loss(lprobs.transpose(0, 1), torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]),
                          blank=0, reduction="sum")
    assert torch.allclose(loss, expected) and loss.requires_grad
    ntokens = sum(len(t) for t in targets)
    assert sample_size == ntokens == log["ntokens"] and log["nsentences"] == 2 and "c_errors" not in log
    _, sentence_size, _ = criterion(task, sentence_avg=True)(model, sample)
    assert sentence_size == 2
    metrics = CtcCriterion.reduce_metrics([log, log])
    assert metrics["loss"] == round(2 * log["loss"] / (2 * ntokens) / math.log(2), 3) and "nll_loss" not in metrics


def test_zero_infinity_for_targets_longer_than_the_input():
    task = Task()
    lprobs, lengths = emissions_for(["THE"], task.target_dictionary)
    sample = sample_for([SENTENCE], task.target_dictionary)
    model = FixedEmissions(lprobs, lengths)
    assert math.isinf(criterion(task)(model, sample)[0].item())
    assert criterion(task, zero_infinity=True)(model, sample)[0].item() == 0.0


def test_validation_counts_units_and_words_and_reduces_to_rates():
    task = Task()
    d = task.target_dictionary
    lprobs, lengths = emissions_for([SENTENCE, "THE DOG"], d, pad_to=60)  # greedy: THA CAT SAAS THA DOG / THA DOG
    model = FixedEmissions(lprobs, lengths).eval()
    loss, sample_size, log = criterion(task, sentence_avg=True)(model, sample_for([SENTENCE, "THE DOG"], d))
    assert (log["c_errors"], log["c_total"]) == (4 + 1, 21 + 8)  # one E→A per THE, two in SEES
    assert (log["wv_errors"], log["w_errors"], log["w_total"]) == (3 + 1, 3 + 1, 5 + 2)
    metrics = CtcCriterion.reduce_metrics([log])
    assert metrics["uer"] == round(100 * 5 / 29, 3) and metrics["wer"] == metrics["raw_wer"] == round(400 / 7, 3)
    assert metrics["nll_loss"] == round(log["loss"] / 29 / math.log(2), 3)  # sentence_avg: loss per sentence
    assert CtcCriterion.logging_outputs_can_be_summed()


def test_validation_wer_with_a_kenlm_decoder_corrects_the_greedy_words(tmp_path):
    (tmp_path / "lm.arpa").write_text(WORD_ARPA)
    write_lexicon(tmp_path / "lexicon.lst", LEXICON_WORDS)
    task = Task()
    d = task.target_dictionary
    lprobs, lengths = emissions_for([SENTENCE], d)
    model = FixedEmissions(lprobs, lengths).eval()
    crit = criterion(task, wer_kenlm_model=str(tmp_path / "lm.arpa"), wer_lexicon=str(tmp_path / "lexicon.lst"),
                     wer_lm_weight=2.0, wer_word_score=-1.0)
    _, _, log = crit(model, sample_for([SENTENCE], d))
    assert log["wv_errors"] == 3 and log["w_errors"] == 0 and log["w_total"] == 5
    metrics = CtcCriterion.reduce_metrics([log])
    assert metrics["wer"] == 0.0 and metrics["raw_wer"] == 60.0

    legacy = criterion(task, wer_args=f"('{tmp_path / 'lm.arpa'}', '{tmp_path / 'lexicon.lst'}', 2.0, -1.0)")
    assert legacy(model, sample_for([SENTENCE], d))[2]["w_errors"] == 0


def test_bad_kenlm_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="wer_lexicon"):
        criterion(Task(), wer_kenlm_model=str(tmp_path / "lm.arpa"))
    with pytest.raises(ConfigError, match="wer_args must be a tuple"):
        criterion(Task(), wer_args="('lm.arpa', 'lexicon.lst')")
