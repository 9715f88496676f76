"""Training on torch-xla's CPU device (common.tpu=true): the toy model, a tiny wav2vec 2.0 and a tiny CTC model.

torch-xla needs its own torch release, so these run only in the environment ``make test-xla`` builds
(torch==2.9.0 + torch-xla==2.9.0, PJRT_DEVICE=CPU) and are skipped elsewhere.

torch-xla 2.9's CPU client with ``CPU_NUM_DEVICES=2`` runs two devices as threads of one process (as a TPU v3
host runs its cores); the launcher makes their collectives meet there (fairseq_lite/training/xla.py). Two replicas
× update_freq [1] are compared with one replica × [2] and with the eager CPU trainer on the same batches, for the
toy model, a tiny wav2vec 2.0 and a tiny CTC model; host transfers and compilations per update are counted.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch_xla")
os.environ.setdefault("PJRT_DEVICE", "CPU")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import train_toy  # noqa: E402
from fairseq_lite.criterions import CRITERION_REGISTRY  # noqa: E402
from fairseq_lite.dataclass.initialize import finalize_config  # noqa: E402
from fairseq_lite.training.checkpoint import load_checkpoint_file  # noqa: E402
from fairseq_lite.training.distributed import call_main  # noqa: E402
from fairseq_lite.training.train import main  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
MAIN_VENV_PYTHON = TESTS_DIR.parent / ".venv" / "bin" / "python"  # torch without torch-xla


@pytest.fixture(autouse=True, scope="module")
def xla_device_first():
    """Start the XLA runtime in this process before any CPU backward: torch's autograd engine sizes its device
    queues at the first backward and fails on a device type registered after it. (Not at import: the launch
    script imports this module and must fork its replicas before the runtime starts.)"""
    import torch_xla

    torch_xla.device()


@CRITERION_REGISTRY.register("toy_mse_device", dataclass=train_toy.ToyCriterionConfig)
class ToyDeviceCriterion(train_toy.ToyCriterion):
    """toy_mse whose logging outputs stay tensors (no host read per micro-batch), as a TPU criterion must."""

    def forward(self, model, sample, reduce=True):
        pred = model(**sample["net_input"])
        keep = ~sample["net_input"]["padding_mask"]
        loss = ((pred.float() - sample["target"].float()) ** 2 * keep).sum()
        ntokens = keep.sum()
        return loss, ntokens, {"loss": loss.detach(), "ntokens": ntokens, "nsentences": len(sample["id"]),
                               "sample_size": ntokens}


def toy_cfg(save_dir, tpu, **groups):
    """The toy run: 60 variable-length examples in batches of 4 (15 batches, the last update one batch short)."""
    common = {"tpu": True, "cpu": False} if tpu else {"cpu": True}
    return train_toy.toy_config(save_dir, common={**common, **groups.pop("common", {})},
                                optimization={"lr": [0.02], "update_freq": [2], **groups.pop("optimization", {})},
                                task={"num_examples": 60, **groups.pop("task", {})},
                                criterion={"_name": "toy_mse_device"}, **groups)


def write_ctc_data(data):
    """Four tone sequences spelling AB, BA, AAB, BBA with their letter labels (train = valid)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    words = ["AB", "BA", "AAB", "BBA"]
    for i, word in enumerate(words):
        tone = np.concatenate([np.sin(2 * np.pi * (300 if c == "A" else 700) * t[: 4000 // len(word)]) for c in word])
        sf.write(data / f"u{i}.wav", (0.3 * tone + rng.normal(0, 0.02, tone.size)).astype(np.float32), 16000)
    (data / "dict.ltr.txt").write_text("A 10\nB 10\n| 10\n")
    for split in ("train", "valid"):
        (data / f"{split}.tsv").write_text(
            f"{data}\n" + "".join(f"u{i}.wav\t{sf.info(data / f'u{i}.wav').frames}\n" for i in range(4)))
        (data / f"{split}.ltr").write_text("".join(" ".join(w) + " |\n" for w in words))


def ctc_cfg(data, save_dir, tpu, max_update=16, update_freq=(1,), batch_size=4, world=1):
    """A tiny wav2vec_ctc (encoder built from stored w2v_args, as a fine-tuned checkpoint is) on ``world``
    devices; no random draws."""
    pretraining = {
        "task": {"_name": "audio_pretraining", "data": str(data), "normalize": False},
        "model": {"_name": "wav2vec2", "encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
                  "encoder_attention_heads": 4, "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 2",
                  "conv_pos": 16, "conv_pos_groups": 4, "final_dim": 16},
    }
    return finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "tpu": tpu, "cpu": not tpu},
        "task": {"_name": "audio_finetuning", "data": str(data), "labels": "ltr", "enable_padding": True,
                 "num_batch_buckets": 1},
        "dataset": {"batch_size": batch_size, "num_workers": 0, "required_batch_size_multiple": 1,
                    "disable_validation": True},
        "distributed_training": {"distributed_world_size": world},
        "optimization": {"max_update": max_update, "lr": [2e-3], "sentence_avg": True, "update_freq": list(update_freq)},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": {"_name": "wav2vec_ctc", "w2v_path": "unused: w2v_args given", "w2v_args": pretraining,
                  "apply_mask": False, "mask_channel_prob": 0.0, "layerdrop": 0.0, "feature_grad_mult": 1.0},
        "criterion": {"_name": "ctc", "zero_infinity": True},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-8},
        "lr_scheduler": {"_name": "fixed"},
    })


LAUNCH_SCRIPT = textwrap.dedent(
    f"""
    import json, logging, sys
    sys.path.insert(0, {str(TESTS_DIR)!r})
    import test_train_xla  # registers the toy task and toy_mse_device in this process (and its forked replicas)
    from pathlib import Path
    from fairseq_lite.training.train import main
    from fairseq_lite.training.xla import launch

    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    name, args, kwargs = json.loads(sys.argv[1])
    launch(getattr(test_train_xla, name)(*[Path(a) for a in args], **kwargs), main)
    """
)


def _launch(tmp_path, name, *args, devices=1, **kwargs):
    """Run ``launch(<name>(*args, **kwargs), main)`` in a fresh interpreter with ``devices`` XLA CPU devices: the
    XLA runtime must not have started before torch_xla.launch forks the replicas."""
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), json.dumps([name, [str(a) for a in args], kwargs])],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PJRT_DEVICE": "CPU",
                               "CPU_NUM_DEVICES": str(devices)})
    return proc.returncode, proc.stdout + proc.stderr


# The CTC criterion logs its loss rounded to 3 decimals (fairseq's round=3): two runs equal to 1e-5 can log values
# one rounding step apart (46.2605 -> 46.26 / 46.261), so CTC losses are compared to that step.
CTC_LOG_STEP = 1.5e-3


def _losses(save_dir):
    out = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["tag"] == "train_inner":
            out[record["step"]] = record["loss"]
    return out


def _assert_same_params(save_dir, reference_dir, atol, skip=()):
    params, reference = (load_checkpoint_file(str(d / "checkpoint_last.pt"))["model"] for d in (save_dir, reference_dir))
    assert params.keys() == reference.keys()
    for key, value in reference.items():
        if not key.endswith(skip):
            torch.testing.assert_close(params[key], value, rtol=0, atol=atol, msg=key)


def _load_without_torch_xla(path):
    """Load a checkpoint in the project's main venv (no torch-xla there): the tensors' devices and a checksum."""
    if not MAIN_VENV_PYTHON.exists():
        pytest.skip(f"{MAIN_VENV_PYTHON} not built (make venv)")
    code = ("import importlib.util, json, sys, torch; from fairseq_lite.training.checkpoint import load_checkpoint_file;"
            "assert importlib.util.find_spec('torch_xla') is None;"
            "m = load_checkpoint_file(sys.argv[1])['model'];"
            "print(json.dumps([sorted({v.device.type for v in m.values()}), sum(float(v.double().sum()) for v in m.values())]))")
    out = subprocess.run([str(MAIN_VENV_PYTHON), "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_toy_launcher_update_equals_the_cpu_trainer_and_its_checkpoint_loads_without_torch_xla(tmp_path):
    """update_freq=[2] on XLA through torch_xla.launch == the eager CPU trainer (whose 2 gloo ranks × update_freq
    [1] equal it, tests/test_train_distributed.py); the 15th batch is alone in the 8th update."""
    main(toy_cfg(tmp_path / "cpu", tpu=False, optimization={"max_update": 8}))
    code, out = _launch(tmp_path, "toy_cfg", tmp_path / "xla", tpu=True, optimization={"max_update": 8})
    assert code == 0, out[-3000:]
    assert "training on 1 xla device(s)" in out
    _assert_same_params(tmp_path / "xla", tmp_path / "cpu", atol=1e-5)
    xla_losses, cpu_losses = _losses(tmp_path / "xla"), _losses(tmp_path / "cpu")
    assert sorted(xla_losses) == list(range(1, 9))
    assert [xla_losses[s] for s in range(1, 9)] == pytest.approx([cpu_losses[s] for s in range(1, 9)], rel=1e-5)
    devices, checksum = _load_without_torch_xla(tmp_path / "xla" / "checkpoint_last.pt")
    reference = load_checkpoint_file(str(tmp_path / "cpu" / "checkpoint_last.pt"))["model"]
    assert devices == ["cpu"]
    assert checksum == pytest.approx(sum(float(v.double().sum()) for v in reference.values()), abs=1e-4)


def _metric_total(name):
    """How many times torch-xla's metric ``name`` (CompileTime, TransferFromDeviceTime) was recorded so far."""
    import torch_xla.debug.metrics as met

    data = met.metric_data(name)
    return data[0] if data else 0


def test_host_reads_only_at_log_interval(tmp_path, monkeypatch):
    """8 updates, log_interval 4: statistics are fetched twice (updates 4 and 8), each time in one
    transfer, and nothing else leaves the device during the updates."""
    from fairseq_lite.training import xla

    def transfers():
        return _metric_total("TransferFromDeviceTime")

    calls, outside = [], []
    real_to_host = xla.to_host
    real_train_step = __import__("fairseq_lite.training.trainer", fromlist=["Trainer"]).Trainer.train_step

    def to_host(data):
        before = transfers()
        out = real_to_host(data)
        calls.append(transfers() - before)
        return out

    def train_step(self, samples, *args, **kwargs):
        before = transfers()
        out = real_train_step(self, samples, *args, **kwargs)
        outside.append(transfers() - before)
        return out

    monkeypatch.setattr(xla, "to_host", to_host)
    monkeypatch.setattr("fairseq_lite.training.trainer.Trainer.train_step", train_step)
    cfg = toy_cfg(tmp_path, tpu=True, common={"log_interval": 4},
                  optimization={"max_update": 8, "update_freq": [1]})
    call_main(cfg, main)
    assert sorted(_losses(tmp_path)) == [4, 8]
    # updates 4 and 8 (the epoch's summary line and the checkpoint find nothing left), then the validation pass
    assert calls == [1, 1, 1]
    assert outside == [0] * 8  # no update read anything back


def test_two_xla_devices_equal_one_with_update_freq_two_and_the_cpu_trainer(tmp_path):
    """Two replicas (two XLA CPU devices, threads of one process as on a TPU v3 host) with update_freq [1] == one
    replica with update_freq [2] == the eager CPU trainer, on the same 15 batches of varying shape: in the 8th
    update the second replica, out of batches, runs the dummy batch (the same graph, weighted 0). Replica 0 alone
    writes the checkpoint and the log lines; the checkpoint loads without torch-xla."""
    main(toy_cfg(tmp_path / "cpu", tpu=False, optimization={"max_update": 8}))
    code, out = _launch(tmp_path, "toy_cfg", tmp_path / "one", tpu=True, optimization={"max_update": 8})
    assert code == 0, out[-3000:]
    code, out = _launch(tmp_path, "toy_cfg", tmp_path / "two", tpu=True, devices=2,
                        optimization={"max_update": 8, "update_freq": [1]},
                        distributed_training={"distributed_world_size": 2})
    assert code == 0, out[-3000:]
    assert "training on 2 xla device(s)" in out and out.count("done training") == 1
    for reference in ("one", "cpu"):
        _assert_same_params(tmp_path / "two", tmp_path / reference, atol=1e-5)
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(two) == list(range(1, 9))
    assert [two[s] for s in range(1, 9)] == pytest.approx([one[s] for s in range(1, 9)], rel=1e-5)
    devices, _ = _load_without_torch_xla(tmp_path / "two" / "checkpoint_last.pt")
    assert devices == ["cpu"]


def test_more_cores_than_the_runtime_has_is_a_config_error(tmp_path):
    """distributed_world_size=2 goes through the launcher; each replica takes rank and world from the runtime,
    which here holds one CPU device, and says how to keep the effective batch."""
    code, out = _launch(tmp_path, "toy_cfg", tmp_path / "xla", tpu=True,
                        distributed_training={"distributed_world_size": 2})
    assert code != 0
    assert ("distributed_training.distributed_world_size=2 but the XLA runtime has 1 device(s)" in out
            and "optimization.update_freq=[4]" in out), out[-3000:]


def test_pod_yaml_loads_verbatim_and_starts_one_replica_per_device(tmp_path):
    """fairseq-hydra-train with the -pod yaml untouched (128 cores): the launcher starts, the replica reads the
    runtime's world (1 CPU device here) and stops with the setting to use."""
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\n")
    config_dir = TESTS_DIR.parent / "config" / "pretraining"
    proc = subprocess.run(
        [sys.executable, "-m", "fairseq_lite.cli.hydra_train", "--config-dir", str(config_dir),
         "--config-name", "wav2vec2_large_librivox_tpu-pod", f"task.data={tmp_path}",
         f"checkpoint.save_dir={tmp_path / 'ckpt'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "distributed_training.distributed_world_size=128 but the XLA runtime has 1 device(s)" in out, out[-3000:]
    assert "distributed_training.distributed_world_size=1" in out


def test_ctc_finetuning_launcher_update_freq_equals_the_cpu_trainer(tmp_path):
    """Tiny CTC model, batches of 2 × update_freq [2] on XLA through the launcher == the eager CPU trainer, and
    the loss falls. The attention key bias is left out: softmax ignores it, so its gradient is rounding noise
    (1e-8) that Adam turns into lr-sized steps of either sign, on XLA and CPU alike."""
    write_ctc_data(tmp_path)
    main(ctc_cfg(tmp_path, tmp_path / "cpu", tpu=False, max_update=4, update_freq=[2], batch_size=2))
    code, out = _launch(tmp_path, "ctc_cfg", tmp_path, tmp_path / "xla", tpu=True, max_update=4, update_freq=[2],
                        batch_size=2)
    assert code == 0, out[-3000:]
    _assert_same_params(tmp_path / "xla", tmp_path / "cpu", atol=1e-5, skip=("self_attn.k_proj.bias",))
    xla_losses, cpu_losses = _losses(tmp_path / "xla"), _losses(tmp_path / "cpu")
    assert [xla_losses[s] for s in range(1, 5)] == pytest.approx([cpu_losses[s] for s in range(1, 5)],
                                                                 rel=1e-5, abs=CTC_LOG_STEP)
    assert xla_losses[4] < 0.5 * xla_losses[1]


def test_ctc_finetuning_on_two_xla_devices_equals_one_with_update_freq_two(tmp_path):
    """Tiny CTC fine-tuning, fairseq never had it on several cores: two replicas × batches of 1 × update_freq [1]
    == one replica × [2], on utterances and label sequences of different lengths."""
    write_ctc_data(tmp_path)
    for name, options in {"one": {"update_freq": [2]}, "two": {"world": 2, "devices": 2}}.items():
        code, out = _launch(tmp_path, "ctc_cfg", tmp_path, tmp_path / name, tpu=True, max_update=4, batch_size=1,
                            **options)
        assert code == 0, out[-3000:]
    _assert_same_params(tmp_path / "two", tmp_path / "one", atol=1e-5, skip=("self_attn.k_proj.bias",))
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert [two[s] for s in range(1, 5)] == pytest.approx([one[s] for s in range(1, 5)], rel=1e-5, abs=CTC_LOG_STEP)


def write_w2v2_data(data):
    """8 clips of 4000 samples (tones and noise), train 6 / valid 2."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    for i in range(8):
        sf.write(data / f"u{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
                                      + rng.normal(0, 0.05, 4000)).astype(np.float32), 16000)
    for split, ids in (("train", range(6)), ("valid", range(6, 8))):
        (data / f"{split}.tsv").write_text(f"{data}\n" + "".join(f"u{i}.wav\t4000\n" for i in ids))


def w2v2_cfg(data, save_dir, max_update=2, batch_size=2, update_freq=(1,), world=1, **task):
    """A tiny wav2vec 2.0 on ``world`` XLA devices, per-batch seeds, one bucket; ``task`` adds task options."""
    return finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "tpu": True, "seed_per_batch": True},
        "task": {"_name": "audio_pretraining", "data": str(data), "max_sample_size": 4000,
                 "enable_padding": True, "num_batch_buckets": 1, **task},
        "dataset": {"batch_size": batch_size, "num_workers": 0, "required_batch_size_multiple": 1,
                    "disable_validation": True},
        "distributed_training": {"distributed_world_size": world},
        "optimization": {"max_update": max_update, "lr": [2e-3], "clip_norm": 10.0,
                         "update_freq": list(update_freq)},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": {"_name": "wav2vec2", "quantize_targets": True, "final_dim": 16, "encoder_layers": 2,
                  "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
                  "conv_feature_layers": "[(24, 10, 5)] + [(24, 3, 2)] * 2", "conv_pos": 16, "conv_pos_groups": 4,
                  "latent_vars": 10, "num_negatives": 5, "encoder_layerdrop": 0.0},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 2},
    })


def _per_update_counts(monkeypatch):
    """Per training update: (graphs compiled, device-to-host transfers), appended as each update ends."""
    from fairseq_lite.training.trainer import Trainer

    real_train_step, counts = Trainer.train_step, []

    def train_step(self, samples, *args, **kwargs):
        compiles, transfers = _metric_total("CompileTime"), _metric_total("TransferFromDeviceTime")
        out = real_train_step(self, samples, *args, **kwargs)
        counts.append((_metric_total("CompileTime") - compiles, _metric_total("TransferFromDeviceTime") - transfers))
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return counts


@pytest.mark.parametrize("precompute, reads", [(True, 0), (False, 1)], ids=["masks-precomputed", "masks-in-model"])
def test_wav2vec2_pretraining_compiles_once_and_reads_nothing_back(tmp_path, monkeypatch, precompute, reads):
    """Tiny wav2vec 2.0, four updates with per-batch seeds (negatives and gumbel noise drawn on the device), as
    fairseq's TPU path runs it: every frame kept and scored, the loss weighted by the mask, so the shapes do not
    depend on the mask and no update compiles a new graph after the second (the first adds the optimizer state).
    With ``task.precompute_mask_indices`` (fairseq's TPU yamls) an update reads nothing back from the device;
    masks drawn by the model read the padding mask to the host once (fairseq's numpy compute_mask_indices).
    Finite losses, a CPU checkpoint."""
    counts = _per_update_counts(monkeypatch)
    write_w2v2_data(tmp_path)
    save_dir = tmp_path / "ckpt"
    call_main(w2v2_cfg(tmp_path, save_dir, max_update=4, precompute_mask_indices=precompute), main)
    print(f"(graphs compiled, host transfers) per update: {counts}")
    assert [compiled for compiled, _ in counts[2:]] == [0, 0]
    assert [transfers for _, transfers in counts] == [reads] * 4
    losses = _losses(save_dir)
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 4
    assert all(v.device.type == "cpu" for v in state["model"].values())


def test_ctc_update_compiles_once_and_reads_back_only_for_torch_xlas_ctc_loss(tmp_path, monkeypatch):
    """Tiny CTC fine-tuning, four updates of batches of 2 on XLA: static shapes (padded targets, the padding mask
    applied without asking whether it holds anything, the loss kept on the device) so no graph is compiled after
    the second update. Two transfers per update remain: torch-xla 2.9 has no XLA lowering of ctc_loss and runs it
    and its backward on the host (aten fallbacks), which nothing on our side can avoid but a CTC written in
    tensor ops."""
    import torch_xla.debug.metrics as met

    counts = _per_update_counts(monkeypatch)
    write_ctc_data(tmp_path)
    call_main(ctc_cfg(tmp_path, tmp_path / "ckpt", tpu=True, max_update=4, batch_size=2), main)
    fallbacks = sorted(name for name in met.counter_names() if name.startswith("aten::"))
    print(f"(graphs compiled, host transfers) per update: {counts}; aten fallbacks: {fallbacks}")
    assert [compiled for compiled, _ in counts[2:]] == [0, 0]
    assert [transfers for _, transfers in counts] == [2] * 4
    assert fallbacks == ["aten::_ctc_loss.Tensor", "aten::_ctc_loss_backward.Tensor"]
    assert sorted(_losses(tmp_path / "ckpt")) == [1, 2, 3, 4]


def test_wav2vec2_on_two_xla_devices_equals_one_with_update_freq_two(tmp_path):
    """Tiny wav2vec 2.0, masks precomputed and distractors drawn per micro-batch from its examples' seeds: two
    replicas × update_freq [1] train the parameters one replica × [2] does on the same six clips (3 updates)."""
    write_w2v2_data(tmp_path)
    runs = {"one": {"update_freq": [2]}, "two": {"world": 2, "devices": 2}}
    for name, options in runs.items():
        code, out = _launch(tmp_path, "w2v2_cfg", tmp_path, tmp_path / name, max_update=3, batch_size=1,
                            precompute_mask_indices=True, **options)
        assert code == 0, out[-3000:]
    _assert_same_params(tmp_path / "two", tmp_path / "one", atol=1e-5)
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(two) == [1, 2, 3] and [two[s] for s in (1, 2, 3)] == pytest.approx([one[s] for s in (1, 2, 3)],
                                                                                       rel=1e-5)
