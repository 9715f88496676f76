"""The contrastive ``wav2vec`` criterion (fairseq's ``criterions/wav2vec_criterion.py``) for wav2vec 2.0
(InfoNCE) and wav2vec 1.0 / vq-wav2vec (binary cross-entropy, optional target weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from fairseq_lite.criterions import register_criterion
from fairseq_lite.criterions.fairseq_criterion import FairseqCriterion
from fairseq_lite.dataclass import FairseqDataclass
from fairseq_lite.errors import ConfigError


@dataclass
class Wav2VecCriterionConfig(FairseqDataclass):
    infonce: bool = field(default=False, metadata={
        "help": "if set, uses cross entropy instead of binary cross entropy (i.e. InfoNCE loss)"})
    loss_weights: Optional[List[float]] = field(default=None, metadata={
        "help": "weights for additional loss terms (not first one)"})
    log_keys: List[str] = field(default_factory=list, metadata={"help": "output keys to log"})


_BUILTIN_KEYS = {"loss", "ntokens", "nsentences", "sample_size", "correct", "count"}


@register_criterion("wav2vec", dataclass=Wav2VecCriterionConfig)
class Wav2vecCriterion(FairseqCriterion):
    """Summed contrastive loss plus weighted extra losses (codebook diversity, feature penalty)."""

    def __init__(self, task: Any = None, infonce: bool = False, loss_weights: Optional[List[float]] = None,
                 log_keys: Optional[List[str]] = None):
        super().__init__(task)
        self.infonce = infonce
        self.loss_weights = list(loss_weights) if loss_weights is not None else None
        self.log_keys = list(log_keys) if log_keys is not None else []

    @staticmethod
    def _sample_size(sample: Dict[str, Any], target: torch.Tensor, infonce: bool,
                     frame_weights: Optional[torch.Tensor] = None) -> Any:
        """``sample["sample_size"]``, else the number of masked frames (a device scalar on XLA), else the number
        of targets (all rows for InfoNCE, positive labels for BCE)."""
        if "sample_size" in sample:
            return int(sample["sample_size"])
        if frame_weights is not None:
            return frame_weights.sum()
        mask_indices = sample["net_input"].get("mask_indices")
        if mask_indices is not None:
            return int(mask_indices.sum())
        return target.numel() if infonce else int(target.long().sum())

    @staticmethod
    def _frame_weights(net_output: Dict[str, Any]) -> Optional[torch.Tensor]:
        """On XLA the model scores every frame (fairseq's TPU path): 1.0 for the masked ones, 0.0 for the rest,
        one per logit row (the mask transposed to T×B and flattened, as ``get_logits`` orders its rows)."""
        mask_indices = net_output.get("mask_indices")
        if mask_indices is None:
            return None
        return mask_indices.transpose(0, 1).reshape(-1).float()

    def forward(self, model, sample: Dict[str, Any], reduce: bool = True):
        """(loss, sample_size, logging_output): the contrastive term plus the weighted extra terms."""
        net_output = model(**sample["net_input"])
        logits = model.get_logits(net_output).float()
        target = model.get_targets(sample, net_output)
        weights = self._frame_weights(net_output)
        loss = self.contrastive_loss(model, logits, target, net_output, reduce and weights is None)
        if weights is not None:
            loss = loss * weights
            loss = loss.sum() if reduce else loss
        sample_size = self._sample_size(sample, target, self.infonce, weights)
        losses = [loss.detach().clone()]
        for term in self.extra_loss_terms(model, net_output, sample_size):
            loss = loss + term
            losses.append(term.detach())
        logging_output = self.logging_output(sample, net_output, logits, target, loss, losses, sample_size, reduce,
                                             weights)
        return loss, sample_size, logging_output

    def contrastive_loss(self, model, logits: torch.Tensor, target: torch.Tensor, net_output: Dict[str, Any],
                         reduce: bool) -> torch.Tensor:
        """InfoNCE (``infonce``: cross-entropy, the positive at index 0) or binary cross-entropy of the logits
        against the targets, with the model's target weights when it has them (wav2vec 1.0)."""
        reduction = "sum" if reduce else "none"
        if self.infonce:
            return F.cross_entropy(logits, target, reduction=reduction)
        weights = model.get_target_weights(target, net_output) if hasattr(model, "get_target_weights") else None
        if torch.is_tensor(weights):
            weights = weights.float()
        return F.binary_cross_entropy_with_logits(logits, target.float(), weights, reduction=reduction)

    def extra_loss_terms(self, model, net_output: Dict[str, Any], sample_size: int) -> List[torch.Tensor]:
        """``loss_weights`` × each of the model's extra losses (codebook diversity, feature penalty) × sample_size;
        one weight may serve every extra loss, a zero weight drops its term."""
        return [term for _, term in self.indexed_extra_loss_terms(model, net_output, sample_size)]

    def indexed_extra_loss_terms(self, model, net_output: Dict[str, Any], sample_size: int
                                 ) -> List[Tuple[int, torch.Tensor]]:
        """``extra_loss_terms`` with each term's index among the model's extra losses (for naming them)."""
        if self.loss_weights is None:
            return []
        extra = model.get_extra_losses(net_output)
        if torch.is_tensor(extra):
            extra = [extra]
        weights = self.loss_weights
        if len(weights) == 1 and len(extra) != 1:
            weights = weights * len(extra)
        if len(weights) != len(extra):
            raise ConfigError(
                f"criterion.loss_weights has {len(weights)} values but the model has {len(extra)} extra "
                "losses: give one weight per extra loss (or a single weight for all)"
            )
        return [(i, coef * term.float() * sample_size)
                for i, (term, coef) in enumerate(zip(extra, weights)) if coef != 0 and term is not None]

    def logging_output(self, sample: Dict[str, Any], net_output: Dict[str, Any], logits: torch.Tensor,
                       target: torch.Tensor, loss: torch.Tensor, losses: List[torch.Tensor], sample_size: Any,
                       reduce: bool, frame_weights: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """What fairseq logs: loss, sizes, each ``loss_i`` term, the ``log_keys`` of the model's output, and for
        InfoNCE the number of frames whose positive scored highest (``correct`` of ``count``). On XLA
        (``frame_weights`` given) the values stay device tensors, read back only when the trainer logs."""
        on_host = frame_weights is None
        source = sample["net_input"].get("source")
        nsentences = sample["id"].numel() if "id" in sample else (source.size(0) if source is not None else 0)
        logging_output: Dict[str, Any] = {
            "loss": loss.item() if reduce and on_host else loss.detach(),
            "ntokens": sample_size,
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        for key in self.log_keys:
            if key in ("logits", "target"):
                if not self.training:
                    logging_output[key] = (logits if key == "logits" else target).detach().cpu().numpy()
            elif key in net_output:
                value = net_output[key]
                if torch.is_tensor(value):
                    value = value.detach()
                logging_output[key] = float(value) if on_host or not torch.is_tensor(value) else value
        if len(losses) > 1:
            for i, term in enumerate(losses):
                logging_output[f"loss_{i}"] = term.sum().item() if on_host else term.sum()
        if self.infonce:
            logging_output["correct"], logging_output["count"] = self.accuracy_counts(logits, frame_weights)
        return logging_output

    @staticmethod
    @torch.no_grad()
    def accuracy_counts(logits: torch.Tensor, frame_weights: Optional[torch.Tensor] = None) -> Tuple[Any, Any]:
        """(frames whose positive, at index 0, has the strictly highest logit; frames): all-equal rows miss.
        With ``frame_weights`` (XLA) only the weighted rows count, and both stay device scalars."""
        if logits.numel() == 0:
            return 0, 0
        hit = (logits.argmax(-1) == 0) & (logits.argmin(-1) != 0)
        if frame_weights is not None:
            return (hit.float() * frame_weights).sum(), frame_weights.sum()
        return int(hit.sum()), hit.numel()

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        """``loss`` (and every ``loss_*``) in bits per sample_size, ``accuracy``, averaged log_keys."""
        def total(key: str) -> float:
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size = total("sample_size") or 1.0
        metrics = {
            "loss": round(total("loss") / sample_size / math.log(2), 3),
            "ntokens": total("ntokens"),
            "nsentences": total("nsentences"),
            "sample_size": total("sample_size"),
        }
        count = total("count")
        if count > 0:
            metrics["accuracy"] = round(total("correct") / count, 5)
        for key in (logging_outputs[0] if logging_outputs else {}):
            if key in _BUILTIN_KEYS or key in ("logits", "target"):
                continue
            if key.startswith("loss"):
                metrics[key] = round(total(key) / sample_size / math.log(2), 3)
            else:
                metrics[key] = round(total(key) / len(logging_outputs), 3)
        return metrics

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False
