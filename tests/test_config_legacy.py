"""The legacy fairseq-train parser: generated flags, aliases, booleans, lists, and fairseq's wav2vec 1.0 command."""

import shlex
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from fairseq_lite.dataclass import FairseqDataclass, II, safe_eval
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.dataclass.legacy_parser import parse_legacy_args
from fairseq_lite.errors import ConfigError
from fairseq_lite.models import MODEL_REGISTRY, BaseFairseqModel
from fairseq_lite.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq_lite.tasks import TASK_REGISTRY, FairseqTask

SUFFIX = uuid.uuid4().hex[:6]
TASK, MODEL, SCHED = f"legacy_task_{SUFFIX}", f"legacy_model_{SUFFIX}", f"legacy_cosine_{SUFFIX}"


@dataclass
class LegacyTaskConfig(FairseqDataclass):
    data: str = "???"
    max_sample_size: Optional[int] = None


@dataclass
class LegacyModelConfig(FairseqDataclass):
    conv_feature_layers: str = "[(512, 10, 5), (512, 8, 4)]"
    log_compression: bool = True
    skip_connections_agg: bool = False
    residual_scale: float = 0.5
    offset: str = "auto"
    widths: List[int] = field(default_factory=lambda: [1])


@dataclass
class LegacySchedulerConfig(FairseqDataclass):
    min_lr: float = 0.0
    warmup_updates: int = 0
    lr: List[float] = II("optimization.lr")


TASK_REGISTRY.register(TASK, dataclass=LegacyTaskConfig)(type(f"LegacyTask{SUFFIX}", (FairseqTask,), {}))
MODEL_REGISTRY.register(MODEL, dataclass=LegacyModelConfig)(type(f"LegacyModel{SUFFIX}", (BaseFairseqModel,), {}))
LR_SCHEDULER_REGISTRY.register(SCHED, dataclass=LegacySchedulerConfig)(type(f"LegacySched{SUFFIX}", (), {}))


def parse(command: str):
    return finalize_config(parse_legacy_args(shlex.split(command)))


def test_positional_data_and_group_flags():
    cfg = parse(f"/manifests --task {TASK} --arch {MODEL} --save-dir /ckpt --num-workers 6 --max-update 400000 "
                "--save-interval 1 --no-epoch-checkpoints --max-tokens 1500000 --skip-invalid-size-inputs-valid-test "
                "--max-sample-size 150000 --lr 0.005 --update-freq 2,4")
    assert cfg.task.data == "/manifests" and cfg.task._name == TASK and cfg.model._name == MODEL
    assert cfg.checkpoint.save_dir == "/ckpt" and cfg.checkpoint.no_epoch_checkpoints is True
    assert cfg.dataset.num_workers == 6 and cfg.dataset.max_tokens == 1500000
    assert cfg.dataset.skip_invalid_size_inputs_valid_test is True
    assert cfg.optimization.max_update == 400000 and cfg.optimization.lr == [0.005]
    assert cfg.optimization.update_freq == [2, 4]
    assert cfg.task.max_sample_size == 150000


def test_booleans_mean_what_they_say():
    # fairseq turns a True-default boolean OFF when its flag is passed (reference §12 #17); we do not.
    cfg = parse(f"/d --task {TASK} --arch {MODEL} --log-compression --skip-connections-agg")
    assert cfg.model.log_compression is True and cfg.model.skip_connections_agg is True
    cfg = parse(f"/d --task {TASK} --arch {MODEL} --no-log-compression --fp16 --no-fp16")
    assert cfg.model.log_compression is False and cfg.common.fp16 is False


def test_list_flags_accept_fairseq_literals():
    layers = "[(512, 10, 5), (512, 8, 4), (512, 4, 2)]"
    cfg = parse(f"/d --task {TASK} --arch {MODEL} --conv-feature-layers '{layers}' --widths '[3, 5]'")
    assert safe_eval(cfg.model.conv_feature_layers) == [(512, 10, 5), (512, 8, 4), (512, 4, 2)]
    assert cfg.model.widths == [3, 5]
    assert parse(f"/d --task {TASK} --arch {MODEL} --widths 6").model.widths == [6]


def test_old_aliases():
    cfg = parse("--max-sentences 4 --remove-bpe letter --min-lr 1e-9 --local_rank 1")
    assert cfg.dataset.batch_size == 4
    assert cfg.common_eval.post_process == "letter"
    assert cfg.optimization.stop_min_lr == 1e-9
    assert cfg.distributed_training.device_id == 1


def test_min_lr_belongs_to_a_scheduler_that_has_one():
    cfg = parse(f"--lr-scheduler {SCHED} --min-lr 1e-06 --stop-min-lr 1e-09 --lr 0.005")
    assert cfg.lr_scheduler.min_lr == 1e-06 and cfg.optimization.stop_min_lr == 1e-09
    assert cfg.lr_scheduler.lr == [0.005]  # interpolated from optimization.lr, no flag of its own


def test_unknown_flag_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean --max-update"):
        parse_legacy_args(["--max-updat", "3"])


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model 'no_such_arch'"):
        parse(f"/d --task {TASK} --arch no_such_arch")


WAV2VEC_COMMAND = """/manifest/path --save-dir /model/path --num-workers 6 --fp16 --max-update 400000
   --save-interval 1 --no-epoch-checkpoints --arch wav2vec --task audio_pretraining
   --min-lr 1e-06 --stop-min-lr 1e-09 --optimizer adam --lr 0.005 --lr-scheduler cosine
   --conv-feature-layers '[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), (512, 1, 1)]'
   --conv-aggregator-layers '[(512, 2, 1), (512, 3, 1), (512, 4, 1), (512, 5, 1), (512, 6, 1), (512, 7, 1), (512, 8, 1), (512, 9, 1), (512, 10, 1), (512, 11, 1), (512, 12, 1), (512, 13, 1)]'
   --skip-connections-agg --residual-scale 0.5 --log-compression --warmup-updates 500
   --warmup-init-lr 1e-07 --criterion wav2vec --num-negatives 10
   --max-sample-size 150000 --max-tokens 1500000 --skip-invalid-size-inputs-valid-test"""


def test_fairseq_wav2vec1_command():
    """fairseq's wav2vec 1.0 training command (commands.md): parsed in full once the components exist."""
    missing = [(group, name) for group, name in [("task", "audio_pretraining"), ("model", "wav2vec"),
               ("criterion", "wav2vec"), ("optimizer", "adam"), ("lr_scheduler", "cosine")]
               if name not in __import__("fairseq_lite").registry.REGISTRIES[group]]
    if missing:
        with pytest.raises(ConfigError, match=f"unknown {missing[0][0]} '{missing[0][1]}'"):
            parse(WAV2VEC_COMMAND)
        return
    cfg = parse(WAV2VEC_COMMAND)
    assert cfg.model._name == "wav2vec" and cfg.task.data == "/manifest/path"
    assert cfg.model.skip_connections_agg is True and cfg.model.log_compression is True
    assert cfg.model.residual_scale == 0.5 and cfg.model.num_negatives == 10
    assert cfg.lr_scheduler.min_lr == 1e-06 and cfg.optimization.stop_min_lr == 1e-09
    assert cfg.lr_scheduler.warmup_updates == 500 and cfg.lr_scheduler.warmup_init_lr == 1e-07
    assert cfg.common.fp16 is True and cfg.dataset.max_tokens == 1500000


def test_a_fractional_value_for_a_list_of_ints_names_the_flag():
    """--update-freq 1.5 was read as [1]; now the flag is named."""
    with pytest.raises(ConfigError, match=r"--update-freq.*expected one int or a list of them.*'1.5'"):
        parse_legacy_args(["/data", "--task", "audio_pretraining", "--arch", "wav2vec", "--optimizer", "adam",
                           "--update-freq", "1.5"])
    cfg = finalize_config(parse_legacy_args(["/data", "--task", "audio_pretraining", "--arch", "wav2vec",
                                             "--criterion", "wav2vec", "--optimizer", "adam", "--update-freq", "2.0,4"]))
    assert cfg.optimization.update_freq == [2, 4]
