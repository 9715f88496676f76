"""The ``hubert`` criterion (fairseq's ``criterions/hubert_criterion.py``): cross-entropy of each label set's
logits over the masked (and, weighted, the unmasked) frames, plus the weighted feature penalty."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from fairseq_lite.criterions import register_criterion
from fairseq_lite.criterions.fairseq_criterion import FairseqCriterion
from fairseq_lite.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq_lite.dataclass import FairseqDataclass, help_text
from fairseq_lite.errors import ConfigError


@dataclass
class HubertCriterionConfig(FairseqDataclass):
    pred_masked_weight: float = field(default=1.0, metadata=help_text("weight for predictive loss for masked frames"))
    pred_nomask_weight: float = field(default=0.0, metadata=help_text(
        "weight for predictive loss for unmasked frames"))
    loss_weights: Optional[List[float]] = field(default=None, metadata=help_text(
        "weights for additional loss terms (not first one)"))
    log_keys: List[str] = field(default_factory=list, metadata=help_text("output keys to log"))


@register_criterion("hubert", dataclass=HubertCriterionConfig)
class HubertCriterion(FairseqCriterion):
    """Summed loss ``pred_masked_weight``·Σ CE(masked) + ``pred_nomask_weight``·Σ CE(unmasked) + the
    ``loss_weights`` × extra losses × sample_size; sample_size counts the frames of each weighted part."""

    def __init__(self, task: Any = None, pred_masked_weight: float = 1.0, pred_nomask_weight: float = 0.0,
                 loss_weights: Optional[List[float]] = None, log_keys: Optional[List[str]] = None):
        super().__init__(task)
        self.pred_masked_weight = pred_masked_weight
        self.pred_nomask_weight = pred_nomask_weight
        self.loss_weights = list(loss_weights) if loss_weights is not None else None
        self.log_keys = list(log_keys) if log_keys is not None else []

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True):
        """(loss, sample_size, logging_output) with fairseq's keys: ``loss_m_i``, ``loss_u_i``,
        ``loss_features_pen``, ``correct_m_i``/``count_m_i``, ``correct_u_i``/``count_u_i``."""
        net_output = model(target_list=sample["target_list"], **sample["net_input"])
        reduction = "sum" if reduce else "none"
        loss = torch.zeros((), device=sample["net_input"]["source"].device)
        sample_size = 0
        logging_output: Dict[str, Any] = {}
        for kind, is_masked, weight in (("m", True, self.pred_masked_weight), ("u", False, self.pred_nomask_weight)):
            logits_list = model.get_logits(net_output, is_masked)
            targets_list = model.get_targets(net_output, is_masked)
            if weight > 0 and not logits_list:
                which = "masked" if is_masked else "unmasked"
                raise ConfigError(f"criterion.pred_{'masked' if is_masked else 'nomask'}_weight={weight} but the "
                                  f"model skips the {which} frames (model.skip_{'masked' if is_masked else 'nomask'})")
            losses = [F.cross_entropy(logits, targets, reduction=reduction)
                      for logits, targets in zip(logits_list, targets_list)]
            for i, term in enumerate(losses):
                logging_output[f"loss_{kind}_{i}"] = term.detach().sum().item()
            if weight > 0:
                loss = loss + weight * sum(losses)
                sample_size += targets_list[0].numel()
            for i, logits in enumerate(logits_list):
                correct, count = Wav2vecCriterion.accuracy_counts(logits)
                logging_output[f"correct_{kind}_{i}"] = correct
                logging_output[f"count_{kind}_{i}"] = count
        for name, term in self.extra_loss_terms(model, net_output, sample_size):
            loss = loss + term
            logging_output[f"loss_{name}"] = term.item()
        for key in self.log_keys:
            if key in net_output:
                logging_output[key] = float(net_output[key])
        logging_output.update({
            "loss": loss.item() if reduce else loss.detach(),
            "ntokens": sample_size,
            "nsentences": sample["id"].numel(),
            "sample_size": sample_size,
        })
        return loss, sample_size, logging_output

    def extra_loss_terms(self, model, net_output: Dict[str, Any], sample_size: int) -> List[Any]:
        """(name, ``loss_weights`` × term × sample_size) for each of the model's extra losses (``features_pen``);
        one weight may serve every term, a zero weight drops its term."""
        if self.loss_weights is None:
            return []
        extra, names = model.get_extra_losses(net_output)
        weights = self.loss_weights * len(extra) if len(self.loss_weights) == 1 else self.loss_weights
        if len(weights) != len(extra):
            raise ConfigError(f"criterion.loss_weights has {len(self.loss_weights)} values but the model has "
                              f"{len(extra)} extra losses ({', '.join(names)}): give one weight per extra loss")
        return [(name, coef * term.float() * sample_size)
                for term, name, coef in zip(extra, names, weights) if coef != 0 and term is not None]

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        """fairseq's: ``loss`` and every ``loss_*`` in bits per sample_size, ``ppl``, the summed ``count_*`` and
        each ``correct_*`` as a fraction of its count."""
        def total(key: str) -> float:
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size = total("sample_size") or 1.0
        loss = total("loss") / sample_size / math.log(2)
        metrics = {"loss": round(loss, 3), "ppl": round(2 ** loss, 2), "ntokens": total("ntokens"),
                   "nsentences": total("nsentences"), "sample_size": total("sample_size")}
        keys = logging_outputs[0].keys() if logging_outputs else []
        for key in keys:
            if key.startswith("count_"):
                metrics[key] = total(key)
            elif key.startswith("loss_"):
                metrics[key] = round(total(key) / sample_size / math.log(2), 3)
        for key in keys:
            if key.startswith("correct_"):
                count = metrics[re.sub("correct", "count", key)]
                metrics[key] = round(total(key) / count, 5) if count else 0.0
        return metrics
