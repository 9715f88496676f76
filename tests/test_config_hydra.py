"""fairseq-hydra-train composition: fairseq-format yaml files, every override spelling, errors, --cfg job."""

import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

from fairseq_lite.cli import hydra_train
from fairseq_lite.dataclass import FairseqDataclass, II, safe_eval
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.models import MODEL_REGISTRY, BaseFairseqModel
from fairseq_lite.tasks import TASK_REGISTRY, FairseqTask

SUFFIX = uuid.uuid4().hex[:6]
TASK = f"yaml_test_task_{SUFFIX}"
MODEL = f"yaml_test_model_{SUFFIX}"


@dataclass
class YamlTaskConfig(FairseqDataclass):
    data: str = "???"
    normalize: bool = False
    max_sample_size: Optional[int] = None
    seed: int = II("common.seed")


@dataclass
class YamlModelConfig(FairseqDataclass):
    conv_feature_layers: str = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    latent_temp: str = "(2, 0.5, 0.999995)"
    dropout: float = 0.1
    normalize: bool = II("task.normalize")
    pos_enc_type: str = "abs"
    loss_weights: Optional[List[float]] = None
    widths: List[int] = field(default_factory=lambda: [1])


TASK_REGISTRY.register(TASK, dataclass=YamlTaskConfig)(type(f"YamlTask{SUFFIX}", (FairseqTask,), {}))
MODEL_REGISTRY.register(MODEL, dataclass=YamlModelConfig)(type(f"YamlModel{SUFFIX}", (BaseFairseqModel,), {}))

FAIRSEQ_YAML = f"""\
# @package _group_

common:
  fp16: true
  log_format: json
  log_interval: 200

checkpoint:
  save_interval_updates: 25000
  keep_interval_updates: 1
  no_epoch_checkpoints: true

task:
  _name: {TASK}
  data: ???
  max_sample_size: 250000
  normalize: true

dataset:
  num_workers: 6
  max_tokens: 1400000

distributed_training:
  distributed_world_size: 64
  ddp_backend: legacy_ddp

optimization:
  max_update: 400000
  lr: [0.0005]

model:
  _name: {MODEL}
  latent_temp: (2,0.5,0.999995)
  conv_feature_layers: '[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]'
"""


@pytest.fixture()
def config_dir(tmp_path):
    (tmp_path / "pretrain.yaml").write_text(FAIRSEQ_YAML)
    return str(tmp_path)


def compose(config_dir, *overrides):
    return finalize_config(compose_config(config_dir, "pretrain", list(overrides)))


def test_fairseq_yaml_with_group_header_composes(config_dir):
    cfg = compose(config_dir, "task.data=/manifests")
    assert cfg.task.data == "/manifests"
    assert cfg.common.fp16 is True and cfg.common.log_interval == 200
    assert cfg.distributed_training.ddp_backend == "legacy_ddp"
    assert cfg.optimization.lr == [0.0005]
    # registered defaults merged under the yaml, interpolations resolved once
    assert cfg.model.dropout == 0.1 and cfg.model.normalize is True
    assert cfg.distributed_training.fp16 is True
    assert cfg.task.seed == 1
    # fairseq's string tuples stay strings and parse without eval
    assert safe_eval(cfg.model.latent_temp) == (2, 0.5, 0.999995)
    assert safe_eval(cfg.model.conv_feature_layers) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


@pytest.mark.parametrize(
    "override",
    [
        "optimization.update_freq=[4]",
        "+optimization.update_freq=[4]",  # fairseq's README spelling; fails in fairseq (issue #3065)
        "++optimization.update_freq=[4]",
        "optimization.update_freq='[4]'",
    ],
)
def test_update_freq_every_spelling(config_dir, override):
    assert compose(config_dir, "task.data=/x", override).optimization.update_freq == [4]


@pytest.mark.parametrize("prefix", ["", "+", "++"])
def test_scalar_override_every_spelling(config_dir, prefix):
    cfg = compose(config_dir, "task.data=/x", f"{prefix}common.seed=7", f"{prefix}model.dropout=0.3")
    assert cfg.common.seed == 7 and cfg.task.seed == 7 and cfg.model.dropout == 0.3


def test_component_key_absent_from_yaml_can_be_set_without_plus(config_dir):
    cfg = compose(config_dir, "task.data=/x", "model.pos_enc_type=rope", "+model.loss_weights=[0.1,10]")
    assert cfg.model.pos_enc_type == "rope" and cfg.model.loss_weights == [0.1, 10.0]


def test_string_tuple_override(config_dir):
    cfg = compose(config_dir, "task.data=/x", "model.latent_temp=(2,0.1,0.999995)")
    assert safe_eval(cfg.model.latent_temp) == (2, 0.1, 0.999995)


def test_unknown_typed_key_names_the_closest(config_dir):
    with pytest.raises(ConfigError, match=r"unknown key 'optimization.max_updates': did you mean 'max_update'"):
        compose(config_dir, "task.data=/x", "optimization.max_updates=3")


def test_unknown_component_key_names_the_closest(config_dir):
    with pytest.raises(ConfigError, match=r"unknown key 'model.dropuot': did you mean 'dropout'"):
        compose(config_dir, "task.data=/x", "model.dropuot=0.3")


def test_unknown_group_names_the_closest(config_dir):
    with pytest.raises(ConfigError, match="did you mean 'optimization'"):
        compose(config_dir, "task.data=/x", "optimisation.lr=[1]")


def test_bad_type_names_the_key(config_dir):
    with pytest.raises(ConfigError, match="optimization.max_update"):
        compose(config_dir, "task.data=/x", "optimization.max_update=abc")


def test_missing_mandatory_value_is_named(config_dir):
    with pytest.raises(ConfigError, match=r"task.data"):
        compose(config_dir)


def test_missing_yaml_is_named(config_dir):
    with pytest.raises(ConfigError, match="nope.yaml"):
        compose_config(config_dir, "nope", [])


@pytest.mark.parametrize(
    "argv",
    [
        ["task.data=/x", "+optimization.update_freq=[2]", "--config-dir", "{d}", "--config-name", "pretrain", "--cfg", "job"],
        ["--config-dir", "{d}", "--config-name", "pretrain", "task.data=/x", "+optimization.update_freq=[2]", "--cfg", "job"],
        ["task.data=/x", "--config-dir={d}", "--cfg", "job", "--config-name=pretrain", "+optimization.update_freq=[2]"],
    ],
    ids=["before", "after", "interleaved"],
)
def test_cli_cfg_job_prints_resolved_config(config_dir, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    code = hydra_train.main([a.format(d=config_dir) for a in argv])
    out = capsys.readouterr().out
    assert code == 0
    assert "update_freq:\n  - 2" in out and "data: /x" in out
    assert "fp16: true" in out and "dropout: 0.1" in out  # registered defaults are shown, interpolations resolved
    assert set(os.listdir(tmp_path)) == before  # no outputs/ folder, no .hydra


def test_cli_reads_fairseq_readme_flag_spelling(config_dir, capsys):
    hydra_train.main(["--config-dir", config_dir, "--config-name", "pretrain", "task.data=/x",
                      "--pos-enc-type", "rope", "--cfg", "job"])
    assert "pos_enc_type: rope" in capsys.readouterr().out


def test_cli_hydra_run_dir_writes_config_only_when_asked(config_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(hydra_train, "launch_training", lambda cfg: None)
    run_dir = tmp_path / "run"
    hydra_train.main(["--config-dir", config_dir, "--config-name", "pretrain", "task.data=/x",
                      f"hydra.run.dir={run_dir}"])
    assert "data: /x" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert not (tmp_path / "outputs").exists()


def test_cli_config_error_is_one_line_exit_2(config_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_lite.cli.hydra_train", "--config-dir", config_dir,
         "--config-name", "pretrain", "task.data=/x", "common.sed=3"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: unknown key 'common.sed': did you mean 'seed'?")
    assert not (tmp_path / "outputs").exists()


def test_cli_full_error_shows_traceback(config_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fairseq_lite.cli.hydra_train", "--config-dir", config_dir,
         "--config-name", "pretrain", "common.sed=3"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_multirun_is_refused_clearly(config_dir):
    with pytest.raises(ConfigError, match="multirun"):
        hydra_train.main(["-m", "--config-dir", config_dir, "--config-name", "pretrain"])


def test_tuple_literal_for_a_sequence_typed_field(config_dir):
    cfg = compose(config_dir, "task.data=/x", "model.widths=(3,4)")
    assert cfg.model.widths == [3, 4]


def test_fairseq_model_presets_are_on_the_search_path(tmp_path):
    (tmp_path / "run.yaml").write_text("task:\n  _name: audio_pretraining\n  data: /x\ncriterion:\n  _name: wav2vec\n  infonce: true\n")
    cfg = finalize_config(compose_config(str(tmp_path), "run", ["+model=wav2vec2/wav2vec2_large"]))
    assert cfg.model._name == "wav2vec2" and cfg.model.encoder_layers == 24 and cfg.model.latent_temp == [2.0, 0.1, 0.999995]
    cfg = finalize_config(compose_config(str(tmp_path), "run", ["+model=wav2vec/vq_wav2vec_gumbel"]))
    assert cfg.model._name == "wav2vec" and cfg.model.vq_type == "gumbel"


def test_cli_runtime_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path):
    """A problem met while running (here: no train.tsv in task.data) exits 1 with one line; --debug re-raises.
    The demo config forks two CPU ranks, so the error is met in a rank and raised by the parent as it was."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-m", "fairseq_lite.cli.hydra_train", f"task.data={tmp_path}",
            f"checkpoint.save_dir={tmp_path / 'ckpt'}", "--config-dir", os.path.join(repo, "config", "pretraining"),
            "--config-name", "demo"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "train.tsv" in result.stderr
    result = subprocess.run(argv + ["--debug"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1 and "Traceback" in result.stderr and "DataError" in result.stderr
