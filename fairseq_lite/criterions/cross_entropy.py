"""The ``cross_entropy`` criterion (fairseq's ``criterions/cross_entropy.py``): summed token NLL, shown in bits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List

import torch.nn.functional as F

from fairseq_lite.criterions import register_criterion
from fairseq_lite.criterions.fairseq_criterion import FairseqCriterion
from fairseq_lite.dataclass import FairseqDataclass, II
from fairseq_lite.errors import ConfigError


@dataclass
class CrossEntropyCriterionConfig(FairseqDataclass):
    """fairseq's ``CrossEntropyCriterionConfig``."""

    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("cross_entropy", dataclass=CrossEntropyCriterionConfig)
class CrossEntropyCriterion(FairseqCriterion):
    """Negative log-likelihood of ``sample["target"]`` summed over non-pad tokens (natural log).

    ``sample_size`` is the number of sentences with ``sentence_avg``, else of target tokens.
    """

    def __init__(self, task: Any, sentence_avg: bool):
        super().__init__(task)
        if task.target_dictionary is None:
            raise ConfigError("the cross_entropy criterion needs a task with a target dictionary (language_modeling)")
        self.padding_idx = task.target_dictionary.pad()
        self.sentence_avg = sentence_avg

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = sample["target"]
        loss = F.nll_loss(lprobs.reshape(-1, lprobs.size(-1)), target.reshape(-1), ignore_index=self.padding_idx,
                          reduction="sum" if reduce else "none")
        sample_size = sample["nsentences"] if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.detach().sum().item(),
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        """``loss`` in bits per sample_size, ``nll_loss`` in bits per token when they differ, ``ppl`` = 2^bits/token."""
        def total(key: str) -> float:
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        loss_sum, sample_size, ntokens = total("loss"), total("sample_size"), total("ntokens")
        loss = loss_sum / (sample_size or 1.0) / math.log(2)
        metrics = {"loss": round(loss, 3), "ntokens": ntokens, "nsentences": total("nsentences"),
                   "sample_size": sample_size}
        per_token = loss
        if sample_size != ntokens:
            per_token = loss_sum / (ntokens or 1.0) / math.log(2)
            metrics["nll_loss"] = round(per_token, 3)
        metrics["ppl"] = round(2**per_token, 2)
        return metrics

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
