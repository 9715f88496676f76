"""Genuine-layout fairseq checkpoints load safely without fairseq; unsafe pickles are refused."""

import argparse
import os
import sys
import types
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fairseq_lite import checkpoint_utils
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.dataclass import FairseqDataclass
from fairseq_lite.errors import CheckpointError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.models import MODEL_REGISTRY, BaseFairseqModel
from fairseq_lite.tasks import TASK_REGISTRY, FairseqTask

SUFFIX = uuid.uuid4().hex[:6]
TASK, MODEL = f"ckpt_task_{SUFFIX}", f"ckpt_model_{SUFFIX}"


@dataclass
class CkptTaskConfig(FairseqDataclass):
    data: str = "???"
    labels: str = "ltr"


@dataclass
class CkptModelConfig(FairseqDataclass):
    width: int = 3


class CkptTask(FairseqTask):
    def load_state_dict(self, state):
        self.target_dictionary_ = state.get("target_dictionary")


class CkptModel(BaseFairseqModel):
    def __init__(self, cfg):
        super().__init__()
        self.proj = torch.nn.Linear(cfg.width, 2)
        self.num_updates = 0

    def set_num_updates(self, num_updates):
        self.num_updates = num_updates


TASK_REGISTRY.register(TASK, dataclass=CkptTaskConfig)(CkptTask)
MODEL_REGISTRY.register(MODEL, dataclass=CkptModelConfig)(CkptModel)


def fairseq_dictionary_object(symbols):
    """An object pickled as fairseq.data.dictionary.Dictionary, with fairseq's attributes (fairseq is absent)."""
    module = types.ModuleType("fairseq.data.dictionary")
    stand_in = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
    module.Dictionary = stand_in
    for name in ("fairseq", "fairseq.data"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["fairseq.data.dictionary"] = module
    obj = stand_in()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    obj.__dict__.update(
        bos_word="<s>", unk_word="<unk>", pad_word="<pad>", eos_word="</s>",
        symbols=specials + symbols, count=[1] * 4 + [5] * len(symbols),
        indices={s: i for i, s in enumerate(specials + symbols)},
        bos_index=0, pad_index=1, eos_index=2, unk_index=3, nspecial=4,
    )
    return obj


def forget_fairseq_modules():
    for name in ("fairseq.data.dictionary", "fairseq.data", "fairseq"):
        sys.modules.pop(name, None)


def model_state(width=3):
    return CkptModel(CkptModelConfig(width=width)).state_dict()


def cfg_era_checkpoint(path, **extra_task_state):
    state = {
        "args": None,
        "cfg": {
            "_name": None,
            "common": {"fp16": True, "seed": 3, "no_such_old_flag": 1},
            "task": {"_name": TASK, "data": "/old/data", "labels": "ltr", "eval_wer": False},
            "model": {"_name": MODEL, "width": 3, "stale_key": 0.5},
            "criterion": {"_name": "ctc_from_a_newer_fairseq", "zero_infinity": True},
            "optimizer": {"_name": "some_optimizer_we_lack", "lr": [1e-4]},
            "generation": {"print_alignment": True},
            "ema": {"store_ema": False},
        },
        "model": model_state(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "CtcCriterion", "optimizer_name": "FP16Optimizer",
                               "lr_scheduler_state": {"best": np.float64(0.5)}, "num_updates": 1234}],
        "task_state": extra_task_state,
        "extra_state": {"train_iterator": {"version": 2, "epoch": 3, "iterations_in_epoch": 7, "shuffle": True},
                        "val_loss": np.float64(1.25), "previous_training_time": 12.5},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    forget_fairseq_modules()
    return path


def test_cfg_era_checkpoint_with_pickled_fairseq_dictionary(tmp_path):
    path = cfg_era_checkpoint(tmp_path / "ft.pt", target_dictionary=fairseq_dictionary_object(["|", "E", "T"]))
    assert "fairseq" not in sys.modules
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": "/new"})
    dictionary = task.target_dictionary_
    assert isinstance(dictionary, Dictionary)
    assert dictionary.index("E") == 5 and dictionary.string(torch.tensor([4, 5, 6])) == "| E T"
    assert cfg.task.data == "/new" and cfg.common.fp16 is True and cfg.common.seed == 3
    assert cfg.criterion is None and cfg.optimizer is None  # components we do not have are ignored
    assert cfg.generation.print_alignment == "hard"
    model = models[0]
    assert model.num_updates == 1234
    torch.testing.assert_close(model.proj.weight, load_checkpoint_to_cpu(str(path))["model"]["proj.weight"])


def test_legacy_args_checkpoint_is_upgraded(tmp_path):
    args = argparse.Namespace(
        task=TASK, arch=MODEL, criterion="binary_cross_entropy", optimizer="adam", lr_scheduler="cosine",
        data=["/manifests"], width=3, lr=0.005, min_lr=1e-6, remove_bpe="letter", fp16=True, seed=9,
        max_update=400000, labels="ltr", some_2019_flag=True,
    )
    torch.save({"args": args, "model": model_state(), "optimizer_history": [{"num_updates": 7}]}, tmp_path / "v1.pt")
    state = load_checkpoint_to_cpu(str(tmp_path / "v1.pt"))
    assert state["args"] is None
    cfg = state["cfg"]
    assert cfg["task"] == {"_name": TASK, "data": "/manifests", "labels": "ltr"}
    assert cfg["criterion"]["_name"] == "wav2vec"  # fairseq's rename of binary_cross_entropy
    assert cfg["optimization"]["lr"] == [0.005] and cfg["optimization"]["stop_min_lr"] == 1e-6
    assert cfg["common_eval"]["post_process"] == "letter" and cfg["common"]["seed"] == 9
    models, full_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "v1.pt")])
    assert full_cfg.model.width == 3 and models[0].num_updates == 7


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_calls_a_function_is_refused(tmp_path):
    torch.save({"args": None, "cfg": {}, "model": {}, "extra_state": {"x": Boom()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"'posix.system'.*trust_checkpoint=True"):
        load_checkpoint_to_cpu(str(tmp_path / "evil.pt"))


def test_unknown_class_is_refused_by_name(tmp_path):
    forget_fairseq_modules()
    module = types.ModuleType("somepkg.things")
    module.Thing = type("Thing", (), {"__module__": "somepkg.things"})
    sys.modules["somepkg"] = types.ModuleType("somepkg")
    sys.modules["somepkg.things"] = module
    try:
        torch.save({"cfg": {}, "model": {}, "extra": module.Thing()}, tmp_path / "odd.pt")
    finally:
        del sys.modules["somepkg.things"], sys.modules["somepkg"]
    with pytest.raises(CheckpointError, match="somepkg.things.Thing"):
        load_checkpoint_to_cpu(str(tmp_path / "odd.pt"))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint_to_cpu(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_to_cpu(str(tmp_path / "missing.pt"))


def test_paths_must_be_a_list():
    with pytest.raises(CheckpointError, match="list of checkpoint paths"):
        checkpoint_utils.load_model_ensemble_and_task("/path/model.pt")


def test_cfg_pickled_as_omegaconf_containers_loads(tmp_path):
    """Some fairseq files keep DictConfig/ListConfig objects in cfg (fairseq#5610's 'Unsupported global')."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"common": {"seed": 5}, "optimization": {"lr": [0.5], "max_update": "${common.seed}"},
                            "task": {"_name": TASK, "data": "/d"}, "model": {"_name": MODEL, "width": 3}})
    torch.save({"args": None, "cfg": cfg, "model": model_state()}, tmp_path / "oc.pt")
    state = load_checkpoint_to_cpu(str(tmp_path / "oc.pt"))
    assert state["cfg"]["optimization"] == {"lr": [0.5], "max_update": 5}
    models, full_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "oc.pt")])
    assert full_cfg.optimization.lr == [0.5] and full_cfg.common.seed == 5
