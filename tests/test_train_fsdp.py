"""ddp_backend=fully_sharded on torch's FSDP2 with 2 gloo ranks on the CPU: the same parameters as one process
(and so as DDP, see test_train_distributed.py) with update_freq and clipping, checkpoints in fairseq's layout that
load into a plain model, into DDP and back into FSDP; layerdrop that drops the same layers on every rank; the
wrapping policy on wav2vec 2.0."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import train_toy
from test_train_distributed import _losses, _model, _run, _run_here, assert_same_training, train_wav2vec2_cli
from test_train_distributed import wav2vec2_reference
from test_train_wav2vec2 import corpus  # noqa: F401 (the fixture)
from fairseq_lite.errors import ConfigError
from fairseq_lite.training.checkpoint import load_checkpoint_file
from fairseq_lite.training.fsdp import check_fsdp_supported, fsdp_units, share_layerdrop

# clip_norm below the toy's gradient norm: every update is clipped by the norm over both ranks' shards
# 3 validation batches: rank 1's second is empty (under FSDP it still runs a forward)
GROUPS = dict(task={"num_examples": 48, "valid_examples": 12}, model={"freeze_first": True})
CLIP = {"clip_norm": 0.05}


def _two_ranks(save_dir, tmp_path, backend, max_update):
    return _run(tmp_path, save_dir, optimization={"max_update": max_update, "update_freq": [2], **CLIP},
                common={"cpu": True}, distributed_training={"distributed_world_size": 2, "ddp_backend": backend},
                **GROUPS)


def _inner_stats(save_dir, key, tag="train_inner"):
    """step -> a stat of the ``tag`` records (the last record of each step)."""
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r["tag"] == tag}


def _assert_params_equal(params, reference, what):
    assert params.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(params[key], value, rtol=0, atol=1e-6, msg=f"{what} {key}")


def test_fsdp_equals_one_process_and_its_checkpoint_loads_into_plain_ddp_and_fsdp(tmp_path):
    """2 FSDP ranks × update_freq 2 == 1 process × update_freq 4 (== 2 DDP ranks × update_freq 2), clipped;
    then the FSDP checkpoint of update 3 resumes under DDP and under FSDP to update 6, both equal to the
    uninterrupted single process, optimizer state included."""
    single = tmp_path / "single"
    _run_here(single, optimization={"max_update": 3, "update_freq": [4], **CLIP}, **GROUPS)
    at_3 = _model(single)
    _run_here(single, optimization={"max_update": 6, "update_freq": [4], **CLIP}, **GROUPS)

    sharded = tmp_path / "fsdp"
    out = _two_ranks(sharded, tmp_path, "fully_sharded", 3)
    assert "fully_sharded: 3 FSDP units (2 layers and the root)" in out
    gnorm = _inner_stats(sharded, "gnorm")
    assert gnorm == pytest.approx({u: _inner_stats(single, "gnorm")[u] for u in (1, 2, 3)}, rel=1e-5)
    assert min(gnorm.values()) > CLIP["clip_norm"] and set(_inner_stats(sharded, "clip").values()) == {100.0}
    state = load_checkpoint_file(str(sharded / "checkpoint_last.pt"))
    _assert_params_equal(state["model"], at_3, "fsdp@3")
    assert all(not hasattr(v, "device_mesh") for v in state["model"].values())  # plain tensors, not DTensors
    plain = train_toy.ToyModel(train_toy.ToyModelConfig(freeze_first=True))
    plain.load_state_dict(state["model"], strict=True)
    assert sorted(state["last_optimizer_state"]["state"]) == list(range(6))  # trained params, by index

    ddp = tmp_path / "ddp_from_fsdp"
    shutil.copytree(sharded, ddp)
    _two_ranks(ddp, tmp_path, "pytorch_ddp", 6)
    _two_ranks(sharded, tmp_path, "fully_sharded", 6)
    reference = load_checkpoint_file(str(single / "checkpoint_last.pt"))
    for save_dir in (ddp, sharded):
        resumed = load_checkpoint_file(str(save_dir / "checkpoint_last.pt"))
        _assert_params_equal(resumed["model"], reference["model"], save_dir.name)
        for i, moments in reference["last_optimizer_state"]["state"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(resumed["last_optimizer_state"]["state"][i][name], moments[name],
                                           rtol=0, atol=1e-6)
        assert _losses(save_dir)[6] == pytest.approx(_losses(single)[6], rel=1e-5)
        assert _losses(save_dir)[6] != _losses(single)[5]
        assert _inner_stats(save_dir, "loss", "valid")[6] == pytest.approx(_inner_stats(single, "loss", "valid")[6])


def test_fsdp_bf16_trains_as_one_bf16_process(tmp_path):
    """bf16 under FSDP: fp32 shards, bf16 compute (MixedPrecisionPolicy); the losses follow one bf16 process's
    (a bf16 model with fp32 master weights) to bf16's resolution, and the checkpoint holds fp32 weights."""
    bf16 = {"cpu": True, "bf16": True}
    _run_here(tmp_path / "single", optimization={"max_update": 4, "update_freq": [4], **CLIP}, common=bf16, **GROUPS)
    _run(tmp_path, tmp_path / "fsdp", optimization={"max_update": 4, "update_freq": [2], **CLIP}, common=bf16,
         distributed_training={"distributed_world_size": 2, "ddp_backend": "fully_sharded"}, **GROUPS)
    sharded, single = _losses(tmp_path / "fsdp"), _losses(tmp_path / "single")
    assert sorted(sharded) == [1, 2, 3, 4] and sharded == pytest.approx(single, rel=1e-2)
    assert {v.dtype for v in _model(tmp_path / "fsdp").values()} == {torch.float32}


def _forked(args):
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def test_fsdp_wav2vec2_with_activation_checkpointing_equals_one_process(corpus, tmp_path):
    """A tiny wav2vec 2.0 on 2 FSDP gloo ranks (forked by fairseq-hydra-train), checkpointing activations,
    equals one process with update_freq 2 without it (common.seed_per_batch)."""
    cfg = wav2vec2_reference(corpus, tmp_path, 3)
    cfg.checkpoint.save_dir = str(tmp_path / "fsdp")
    cfg.distributed_training.ddp_backend = "fully_sharded"
    cfg.distributed_training.distributed_world_size = 2
    out = train_wav2vec2_cli(cfg, tmp_path, _forked)
    assert "fully_sharded: 3 FSDP units (2 layers and the root)" in out
    assert_same_training(tmp_path / "fsdp", tmp_path / "single", 3)


def test_fsdp_units_are_the_encoder_layers_of_wav2vec2():
    from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(encoder_layers=3, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
                         conv_feature_layers="[(8, 10, 5)]", conv_pos=4, conv_pos_groups=2, final_dim=8)
    model = Wav2Vec2Model(cfg)
    assert [id(m) for m in fsdp_units(model)] == [id(m) for m in model.encoder.layers]
    check_fsdp_supported(model, torch.nn.Module())  # no layerdrop, a criterion without parameters
    assert share_layerdrop(model) == []

    dropping = Wav2Vec2Model(Wav2Vec2Config(**{**cfg.__dict__, "encoder_layerdrop": 0.1}))
    check_fsdp_supported(dropping, torch.nn.Module())
    assert share_layerdrop(dropping) == [dropping.encoder]
    assert isinstance(dropping.encoder.layerdrop_generator, torch.Generator)
    with pytest.raises(ConfigError, match="criterion Linear has trained parameters.*pytorch_ddp"):
        check_fsdp_supported(model, torch.nn.Linear(2, 2))
    toy = train_toy.ToyModel(train_toy.ToyModelConfig(layerdrop=0.2))  # draws from the global RNG
    with pytest.raises(ConfigError, match="fully_sharded with layerdrop 0.2 in ToyModel.*pytorch_ddp"):
        check_fsdp_supported(toy, torch.nn.Module())


def _layerdrop_run(tmp_path, name, max_update):
    """Encoder layerdrop 0.5 (and dropout, seed_per_batch: the global RNG differs per rank) on 2 FSDP ranks
    × update_freq 2 over the toy's 15 batches; returns the log and, per rank, the layers run per micro-batch."""
    save_dir, record = tmp_path / name, tmp_path / f"{name}_layers"
    record.mkdir(exist_ok=True)
    model = {"_name": "toy_encoder", "layers": 4, "layerdrop": 0.5, "dropout": 0.1, "record_layers": str(record)}
    out = _run(tmp_path, save_dir, optimization={"max_update": max_update, "update_freq": [2]},
               common={"cpu": True, "seed_per_batch": True}, task={"num_examples": 60}, model=model,
               checkpoint={"save_interval_updates": 2},
               distributed_training={"distributed_world_size": 2, "ddp_backend": "fully_sharded"})
    return out, [[json.loads(line) for line in (record / f"layers.{rank}.jsonl").read_text().splitlines()]
                 for rank in (0, 1)]


def test_fsdp_layerdrop_drops_the_same_layers_on_every_rank(tmp_path):
    """4 updates (rank 1's last micro-batch is the dummy batch): the run completes, both ranks ran the same
    encoder layers in each of their 8 micro-batches while the micro-batches drop different sets; resumed from the
    checkpoint of update 2 it drops what the uninterrupted run did; the checkpoint loads into the plain model."""
    out, ran = _layerdrop_run(tmp_path, "fsdp", 4)
    assert "fully_sharded: 5 FSDP units (4 layers and the root)" in out
    assert len(ran[0]) == 8 and ran[0] == ran[1]
    assert len({tuple(layers) for layers in ran[0]}) > 1 and min(map(len, ran[0])) < 4
    assert sorted(_losses(tmp_path / "fsdp")) == [1, 2, 3, 4]

    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "fsdp" / "checkpoint_1_2.pt", tmp_path / "resumed" / "checkpoint_last.pt")
    out, resumed = _layerdrop_run(tmp_path, "resumed", 4)
    assert "loaded checkpoint" in out and resumed == [ran[0][4:]] * 2

    state = load_checkpoint_file(str(tmp_path / "fsdp" / "checkpoint_last.pt"))
    plain = train_toy.ToyEncoderModel(train_toy.ToyEncoderConfig(layers=4, layerdrop=0.5))
    plain.load_state_dict(state["model"], strict=True)
    assert plain.encoder.layerdrop_generator is None
    data = train_toy.ToyDataset(4, 4, 8, 1)
    batch = data.collater([data[i] for i in range(4)])
    assert torch.isfinite(plain.eval()(**batch["net_input"])).all()
