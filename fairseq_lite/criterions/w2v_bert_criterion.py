"""The ``w2v_bert`` criterion: w2v-BERT's pretraining loss as fairseq2's ``W2VBertModel.compute_loss`` forms it.

    loss = bert_loss_weight · MLM + w2v2_loss_weight · (contrastive + loss_weights[0] · diversity · M
                                                       + loss_weights[1] · features_pen · M)

MLM is the summed cross-entropy of the top layer's ``mlm_proj`` logits against the quantizer's code ids at the M
masked frames; the contrastive term is wav2vec 2.0's summed InfoNCE on an intermediate layer (criterion
``wav2vec`` with ``infonce``); the extra terms are wav2vec 2.0's, scaled by M (the sample size) as fairseq
scales them. fairseq has no w2v-BERT recipe, so the names and defaults are fairseq2's (``bert_weight``,
``w2v2_weight``, ``bert_label_smoothing``, diversity 0.1, feature penalty 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from fairseq_lite.criterions import register_criterion
from fairseq_lite.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq_lite.dataclass import FairseqDataclass, help_text

_MLM_COUNTS = ("mlm_correct", "mlm_count")


@dataclass
class W2vBertCriterionConfig(FairseqDataclass):
    bert_loss_weight: float = field(default=1.0, metadata=help_text(
        "weight of the masked-prediction (MLM) loss (fairseq2's bert_weight)"))
    w2v2_loss_weight: float = field(default=1.0, metadata=help_text(
        "weight of the wav2vec 2.0 loss: contrastive + weighted diversity and feature penalty (fairseq2's w2v2_weight)"))
    bert_label_smoothing: float = field(default=0.0, metadata=help_text(
        "label smoothing of the MLM cross-entropy (fairseq2's bert_label_smoothing)"))
    loss_weights: Optional[List[float]] = field(default_factory=lambda: [0.1, 10.0], metadata=help_text(
        "weights of the codebook diversity loss and the feature penalty (fairseq2: 0.1 and 10)"))
    log_keys: List[str] = field(default_factory=list, metadata=help_text("output keys to log"))


@register_criterion("w2v_bert", dataclass=W2vBertCriterionConfig)
class W2vBertCriterion(Wav2vecCriterion):
    """Summed w2v-BERT loss; logs ``loss_contrastive``, ``loss_mlm``, the weighted ``loss_diversity`` and
    ``loss_features_pen``, the contrastive ``accuracy`` (``correct``/``count``) and ``mlm_accuracy``."""

    def __init__(self, task: Any = None, bert_loss_weight: float = 1.0, w2v2_loss_weight: float = 1.0,
                 bert_label_smoothing: float = 0.0, loss_weights: Optional[List[float]] = (0.1, 10.0),
                 log_keys: Optional[List[str]] = None):
        super().__init__(task, infonce=True, loss_weights=loss_weights, log_keys=log_keys)
        self.bert_loss_weight = bert_loss_weight
        self.w2v2_loss_weight = w2v2_loss_weight
        self.bert_label_smoothing = bert_label_smoothing

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True):
        """(loss, sample_size = masked frames, logging_output); the loss is always summed, as fairseq2's
        (``reduce`` is part of the criterion interface only)."""
        net_output = model(**sample["net_input"])
        logits = model.get_logits(net_output).float()
        target = model.get_targets(sample, net_output)
        contrastive = self.contrastive_loss(model, logits, target, net_output, reduce=True)
        sample_size = self._sample_size(sample, target, infonce=True)
        w2v2 = contrastive
        named = {"contrastive": contrastive.detach()}
        for i, term in self.indexed_extra_loss_terms(model, net_output, sample_size):
            w2v2 = w2v2 + term
            named[model.extra_loss_names[i]] = term.detach()
        mlm, mlm_counts = self.mlm_loss(net_output)
        named["mlm"] = mlm.detach()
        loss = self.bert_loss_weight * mlm + self.w2v2_loss_weight * w2v2
        logging_output = self.logging_output(sample, net_output, logits, target, loss, [contrastive], sample_size,
                                             reduce=True)
        logging_output.update({f"loss_{name}": term.sum().item() for name, term in named.items()})
        logging_output.update(zip(_MLM_COUNTS, mlm_counts))
        return loss, sample_size, logging_output

    def mlm_loss(self, net_output: Dict[str, Any]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Cross-entropy of ``mlm_logits`` (M × V × G_t) against ``mlm_targets`` (M × G_t), summed (fairseq2's
        ``cross_entropy(..., reduction="sum")``), and (correct, count) of the argmax predictions."""
        logits, targets = net_output["mlm_logits"].float(), net_output["mlm_targets"]
        loss = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=self.bert_label_smoothing)
        with torch.no_grad():
            correct = int((logits.argmax(1) == targets).sum()) if targets.numel() else 0
        return loss, (correct, targets.numel())

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        """The ``wav2vec`` criterion's metrics (every ``loss_*`` in bits per masked frame, ``accuracy``) and
        ``mlm_accuracy``."""
        logs = [{k: v for k, v in log.items() if k not in _MLM_COUNTS} for log in logging_outputs]
        metrics = Wav2vecCriterion.reduce_metrics(logs)
        correct, count = (sum(float(log.get(k, 0)) for log in logging_outputs) for k in _MLM_COUNTS)
        if count > 0:
            metrics["mlm_accuracy"] = round(correct / count, 5)
        return metrics
