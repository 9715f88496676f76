"""The ``wav2vec`` criterion: InfoNCE and binary losses, extra-loss weights, logging and reduction."""

import math

import pytest
import torch
from torch import nn

import fairseq_lite  # noqa: F401
from fairseq_lite.criterions import build_criterion
from fairseq_lite.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq_lite.errors import ConfigError


class FixedModel(nn.Module):
    """A model whose logits, targets and extra losses are given (the criterion's view of a model)."""

    def __init__(self, logits, targets, extra=(), weights=None):
        super().__init__()
        self.logits, self.targets, self.extra, self.weights = logits, targets, list(extra), weights
        if weights is not None:
            self.get_target_weights = lambda target, net_output: self.weights

    def forward(self, source):
        return {"x": self.logits, "prob_perplexity": torch.tensor(7.5), "temp": 1.5}

    def get_logits(self, net_output):
        return net_output["x"]

    def get_targets(self, sample, net_output):
        return self.targets

    def get_extra_losses(self, net_output):
        return self.extra


def sample(n=2):
    return {"net_input": {"source": torch.zeros(n, 10)}, "id": torch.arange(n)}


def test_infonce_by_hand_with_accuracy_and_ties():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    model = FixedModel(logits, torch.zeros(3, dtype=torch.long))
    crit = build_criterion({"_name": "wav2vec", "infonce": True, "log_keys": ["prob_perplexity", "temp"]}, None)
    assert isinstance(crit, Wav2vecCriterion)
    loss, sample_size, log = crit(model, sample())
    expected = (math.log(math.e**2 + math.e + 1) - 2) + (math.log(1 + math.e**3 + math.e) - 0) + math.log(3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert sample_size == 3 and log["sample_size"] == 3 and log["nsentences"] == 2
    assert log["correct"] == 1 and log["count"] == 3  # the all-equal row does not count as correct
    assert log["prob_perplexity"] == 7.5 and log["temp"] == 1.5
    metrics = Wav2vecCriterion.reduce_metrics([log, log])
    assert metrics["loss"] == round(expected / 3 / math.log(2), 3)
    assert metrics["accuracy"] == round(1 / 3, 5) and metrics["prob_perplexity"] == 7.5


def test_extra_losses_are_weighted_by_sample_size_and_logged():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    extra = [torch.tensor(0.5), torch.tensor(2.0)]
    model = FixedModel(logits, torch.zeros(2, dtype=torch.long), extra)
    crit = build_criterion({"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]}, None)
    loss, sample_size, log = crit(model, sample())
    main = (math.log(math.e + 1) - 1) + (math.log(1 + math.e) - 0)
    assert loss.item() == pytest.approx(main + 0.1 * 0.5 * 2 + 10 * 2.0 * 2, rel=1e-6)
    assert log["loss_0"] == pytest.approx(main, rel=1e-6)
    assert log["loss_1"] == pytest.approx(0.1) and log["loss_2"] == pytest.approx(40.0)
    metrics = Wav2vecCriterion.reduce_metrics([log])
    assert metrics["loss_2"] == round(40.0 / 2 / math.log(2), 3)

    single = build_criterion({"_name": "wav2vec", "infonce": True, "loss_weights": [1.0]}, None)
    loss_single, _, _ = single(model, sample())
    assert loss_single.item() == pytest.approx(main + 0.5 * 2 + 2.0 * 2, rel=1e-6)
    wrong = build_criterion({"_name": "wav2vec", "infonce": True, "loss_weights": [1.0, 2.0, 3.0]}, None)
    with pytest.raises(ConfigError, match="loss_weights"):
        wrong(model, sample())


def test_sample_size_prefers_the_sample_then_mask_indices():
    model = FixedModel(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    crit = build_criterion({"_name": "wav2vec", "infonce": True}, None)
    assert crit(model, {**sample(), "sample_size": 11})[1] == 11
    s = sample()
    s["net_input"]["mask_indices"] = torch.ones(2, 3, dtype=torch.bool)
    model.forward = lambda source, mask_indices: {"x": model.logits}
    assert crit(model, s)[1] == 6


def test_binary_mode_with_target_weights():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    weights = torch.tensor([1.0, 0.25, 1.0, 0.25])
    model = FixedModel(logits, targets, weights=weights)
    crit = build_criterion({"_name": "wav2vec"}, None)
    loss, sample_size, log = crit(model, sample())

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = sum(w * bce(z, t) for z, t, w in zip(logits.tolist(), targets.tolist(), weights.tolist()))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert sample_size == 2  # number of positive labels
    assert "correct" not in log
