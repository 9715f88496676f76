"""Test-only task, model and criterion for the training tests (registered under toy_* names).

A tiny per-frame regression: variable-length inputs (so sample_size normalisation matters), a stack of
residual layers with optional layerdrop, a frozen layer, and a submodule that records set_num_updates; and the
same regression through fairseq_lite's TransformerEncoder (``toy_encoder``), which can record the layers it ran.
Imported by the training tests and by the scripts they run in subprocesses.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fairseq_lite.criterions import CRITERION_REGISTRY, FairseqCriterion
from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.models import MODEL_REGISTRY, BaseFairseqModel
from fairseq_lite.modules.transformer_encoder import TransformerEncoder
from fairseq_lite.tasks import TASK_REGISTRY, FairseqTask


@dataclass
class ToyTaskConfig(FairseqDataclass):
    num_examples: int = 64
    valid_examples: int = 16
    dim: int = 4
    max_len: int = 8
    nan_example: int = -1  # this training example's features are NaN (a bad batch)
    step_sleep: float = 0.0  # seconds per micro-batch, to give a test time to kill the run


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, dim: int, max_len: int, seed: int, nan_example: int = -1):
        rng = np.random.RandomState(seed)
        self.sizes = rng.randint(2, max_len + 1, size=n)
        weight = np.linspace(-1, 1, dim)
        self.x = [rng.randn(int(s), dim).astype(np.float32) for s in self.sizes]
        self.y = [(x @ weight + 0.1 * rng.randn(len(x))).astype(np.float32) for x in self.x]
        if 0 <= nan_example < n:
            self.x[nan_example][:] = np.nan

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return {"id": i, "x": torch.from_numpy(self.x[i]), "y": torch.from_numpy(self.y[i])}

    def num_tokens(self, i):
        return int(self.sizes[i])

    def ordered_indices(self):
        return np.random.permutation(len(self))

    def collater(self, samples):
        if not samples:
            return {}
        n, length = len(samples), max(len(s["x"]) for s in samples)
        x = torch.zeros(n, length, samples[0]["x"].shape[1])
        y = torch.zeros(n, length)
        mask = torch.ones(n, length, dtype=torch.bool)
        for i, s in enumerate(samples):
            k = len(s["x"])
            x[i, :k], y[i, :k], mask[i, :k] = s["x"], s["y"], False
        return {
            "id": torch.tensor([s["id"] for s in samples]),
            "net_input": {"source": x, "padding_mask": mask},
            "target": y,
        }


@TASK_REGISTRY.register("toy_regression", dataclass=ToyTaskConfig)
class ToyTask(FairseqTask):
    def load_dataset(self, split, combine=False, epoch=1, **kwargs):
        cfg = self.cfg
        if split == "train":
            self.datasets[split] = ToyDataset(cfg.num_examples, cfg.dim, cfg.max_len, 0, cfg.nan_example)
        else:
            self.datasets[split] = ToyDataset(cfg.valid_examples, cfg.dim, cfg.max_len, 1000 + len(split))

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self.cfg.step_sleep:
            time.sleep(self.cfg.step_sleep)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)


@dataclass
class ToyModelConfig(FairseqDataclass):
    dim: int = 4
    hidden: int = 16
    layers: int = 2
    layerdrop: float = 0.0
    freeze_first: bool = False
    dropout: float = 0.0


class UpdateCounter(nn.Module):
    """Stands in for the gumbel quantizer: remembers the update count it was given."""

    def __init__(self):
        super().__init__()
        self.num_updates = -1

    def set_num_updates(self, num_updates):
        self.num_updates = num_updates


@MODEL_REGISTRY.register("toy_linear", dataclass=ToyModelConfig)
class ToyModel(BaseFairseqModel):
    def __init__(self, cfg):
        super().__init__()
        self.proj = nn.Linear(cfg.dim, cfg.hidden)
        self.layers = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.layers))
        self.out = nn.Linear(cfg.hidden, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop = cfg.layerdrop
        self.counter = UpdateCounter()
        if cfg.freeze_first:
            self.proj.requires_grad_(False)

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    def forward(self, source, padding_mask=None):
        h = torch.tanh(self.proj(source))
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            h = h + torch.tanh(self.dropout(layer(h)))
        return self.out(h).squeeze(-1)


@dataclass
class ToyEncoderConfig(ToyModelConfig):
    record_layers: str = ""  # a folder: each training forward appends the layers it ran to layers.<rank>.jsonl


@MODEL_REGISTRY.register("toy_encoder", dataclass=ToyEncoderConfig)
class ToyEncoderModel(BaseFairseqModel):
    """The toy regression through a tiny TransformerEncoder (its layerdrop); records the encoder layers run."""

    def __init__(self, cfg):
        super().__init__()
        self.record_layers = cfg.record_layers
        self.proj = nn.Linear(cfg.dim, cfg.hidden)
        self.encoder = TransformerEncoder(cfg.hidden, cfg.layers, cfg.hidden, 2, dropout=cfg.dropout,
                                          attention_dropout=0.0, layerdrop=cfg.layerdrop, conv_pos=2,
                                          conv_pos_groups=2)
        self.out = nn.Linear(cfg.hidden, 1)
        self.ran = []
        for i, layer in enumerate(self.encoder.layers):
            layer.register_forward_pre_hook(lambda module, args, i=i: self.ran.append(i))

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    def forward(self, source, padding_mask=None):
        self.ran = []
        x, _ = self.encoder(torch.tanh(self.proj(source)), padding_mask)
        if self.training and self.record_layers:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with open(os.path.join(self.record_layers, f"layers.{rank}.jsonl"), "a") as f:
                f.write(json.dumps(self.ran) + "\n")
        return self.out(x).squeeze(-1)


@dataclass
class ToyCriterionConfig(FairseqDataclass):
    pass


@CRITERION_REGISTRY.register("toy_mse", dataclass=ToyCriterionConfig)
class ToyCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        pred = model(**sample["net_input"])
        keep = ~sample["net_input"]["padding_mask"]
        err = (pred.float() - sample["target"].float()) ** 2
        loss = (err * keep).sum()
        ntokens = int(keep.sum())
        log = {"loss": float(loss.detach()), "ntokens": ntokens, "nsentences": len(sample["id"]),
               "sample_size": ntokens}
        return loss, ntokens, log

    @staticmethod
    def reduce_metrics(logging_outputs):
        total = sum(o["loss"] for o in logging_outputs)
        size = sum(o["sample_size"] for o in logging_outputs)
        loss = total / max(size, 1)
        return {"loss": loss, "neg_loss": -loss}  # a metric to maximise that is negative

    @staticmethod
    def logging_outputs_can_be_summed():
        return True


def toy_config(save_dir, **groups):
    """A finalised FairseqConfig for the toy task; ``groups`` override per group, e.g. common={"fp16": True}."""
    from fairseq_lite.dataclass.initialize import finalize_config

    cfg = {
        "common": {"seed": 3, "log_interval": 1, "log_format": "simple", "cpu": True},
        "dataset": {"batch_size": 4, "required_batch_size_multiple": 1, "num_workers": 0, "valid_subset": "valid"},
        "optimization": {"max_update": 8, "lr": [0.01], "update_freq": [1], "clip_norm": 0.0},
        "checkpoint": {"save_dir": str(save_dir), "save_interval_updates": 0},
        "task": {"_name": "toy_regression"},
        "model": {"_name": "toy_linear"},
        "criterion": {"_name": "toy_mse"},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6, "weight_decay": 0.01},
        "lr_scheduler": {"_name": "fixed"},
    }
    for group, values in groups.items():
        cfg.setdefault(group, {}).update(values)
    return finalize_config(cfg)
