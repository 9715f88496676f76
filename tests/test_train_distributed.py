"""Training in subprocesses: gloo data parallelism versus update_freq, SIGKILL and resume, a kill while a
checkpoint is written."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import train_toy
from omegaconf import OmegaConf
from test_train_wav2vec2 import _config as wav2vec2_config
from test_train_wav2vec2 import corpus  # noqa: F401 (the fixture)
from fairseq_lite.dataclass.utils import config_to_dict
from fairseq_lite.training.checkpoint import load_checkpoint_file
from fairseq_lite.training.train import main

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent(
    f"""
    import json, logging, os, signal, sys
    sys.path.insert(0, {TESTS_DIR!r})
    import torch
    torch.set_num_threads(1)
    import train_toy  # registers the toy task in this process and in every spawned rank
    from fairseq_lite.training.distributed import call_main
    from fairseq_lite.training.train import main

    def kill_on_save(n):
        # SIGKILL this process in the middle of its n-th checkpoint write
        real, calls = torch.save, []
        def save(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                f.write(b"half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(obj, f, *args, **kwargs)
        torch.save = save

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        if os.environ.get("KILL_ON_SAVE"):
            kill_on_save(int(os.environ["KILL_ON_SAVE"]))
        call_main(train_toy.toy_config(sys.argv[1], **json.loads(sys.argv[2])), main)
    """
)


def _start(tmp_path, save_dir, env=None, **groups):
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(save_dir), json.dumps(groups)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}.items() if v is not None},
    )


def _run(tmp_path, save_dir, env=None, **groups):
    """Train the toy in a subprocess (``env`` entries of None are removed from its environment); its output."""
    proc = _start(tmp_path, save_dir, env, **groups)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return out


def _torchrun(args, nproc=2):
    """``torchrun --standalone --nproc_per_node N args...`` (a free port): the ranks come from the environment."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def _assert_logged_once(out, world=2):
    """Rank 0 logs the run; every other rank only its own "initialized rank" line."""
    assert out.count("num. model params") == 1, out[-3000:]
    for rank in range(world):
        assert out.count(f"initialized rank {rank} of {world}") == 1, out[-3000:]


def _run_here(save_dir, **groups):
    """The same training in this process (single thread, as the scripts): one torch import fewer."""
    main(train_toy.toy_config(save_dir, **groups))


def _model(save_dir):
    return load_checkpoint_file(str(save_dir / "checkpoint_last.pt"))["model"]


def _losses(save_dir):
    """step -> train_inner loss, the last record of each step (a resumed run repeats some)."""
    out = {}
    with open(save_dir / "metrics.jsonl") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["tag"] == "train_inner":
                out[record["step"]] = record["loss"]
    return out


TOY = dict(task={"num_examples": 60}, model={"freeze_first": True})


def _toy_reference(tmp_path):
    """The toy trained in this process with update_freq 2 (8 updates)."""
    _run_here(tmp_path / "single", optimization={"max_update": 8, "update_freq": [2]}, **TOY)
    return _model(tmp_path / "single")


def _assert_toy_equal(save_dir, reference, reference_dir):
    params = _model(save_dir)
    for key, value in reference.items():
        torch.testing.assert_close(params[key], value, rtol=0, atol=1e-6, msg=f"{save_dir.name} {key}")
    assert _losses(save_dir)[8] == pytest.approx(_losses(reference_dir)[8], rel=1e-5)


def test_two_gloo_ranks_equal_update_freq_two(tmp_path):
    """Same micro-batches: 1 process × update_freq 2 == 2 legacy_ddp ranks × update_freq 1 (forked by
    distributed_world_size=2).

    15 batches per epoch: the 8th update is one batch alone, so rank 1 runs the dummy batch (loss × 0).
    Without OMP_NUM_THREADS the forked ranks share the cores out.
    """
    reference = _toy_reference(tmp_path)
    save_dir = tmp_path / "legacy_ddp"
    out = _run(tmp_path, save_dir, env={"OMP_NUM_THREADS": None},
               optimization={"max_update": 8, "update_freq": [1]}, common={"cpu": True},
               distributed_training={"distributed_world_size": 2, "ddp_backend": "legacy_ddp"}, **TOY)
    assert f"{max(1, len(os.sched_getaffinity(0)) // 2)} thread(s) each" in out
    _assert_toy_equal(save_dir, reference, tmp_path / "single")
    # the frozen layer kept its initial weights
    torch.manual_seed(3)
    fresh = train_toy.ToyModel(train_toy.ToyModelConfig(freeze_first=True))
    assert torch.equal(reference["proj.weight"], fresh.proj.weight.detach())


def test_torchrun_ranks_resume_and_equal_update_freq_two(tmp_path):
    """pytorch_ddp under torchrun (ranks from the environment), stopped after 5 updates and resumed by a
    second torchrun (both ranks read checkpoint_last.pt), equals 1 process × update_freq 2; each rank logs once."""
    reference = _toy_reference(tmp_path)
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)
    save_dir = tmp_path / "pytorch_ddp"
    for max_update in (5, 8):
        groups = dict(optimization={"max_update": max_update}, distributed_training={"ddp_backend": "pytorch_ddp"},
                      **TOY)
        out = _torchrun([str(script), str(save_dir), json.dumps(groups)])
        _assert_logged_once(out)
    assert "loaded checkpoint" in out and "@ 5 updates" in out
    _assert_toy_equal(save_dir, reference, tmp_path / "single")


def test_layerdrop_with_torch_ddp_trains(tmp_path):
    save_dir = tmp_path / "layerdrop"
    _run(tmp_path, save_dir, optimization={"max_update": 8}, model={"layerdrop": 0.5, "layers": 4},
         common={"cpu": True}, distributed_training={"distributed_world_size": 2, "ddp_backend": "pytorch_ddp"})
    losses = _losses(save_dir)
    assert sorted(losses) == list(range(1, 9))
    assert all(torch.isfinite(v).all() for v in _model(save_dir).values())


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path):
    groups = dict(optimization={"max_update": 40}, checkpoint={"save_interval_updates": 5})
    _run_here(tmp_path / "straight", **groups)

    save_dir = tmp_path / "killed"
    proc = _start(tmp_path, save_dir, task={"step_sleep": 0.03}, **groups)
    deadline = time.time() + 120
    while not (save_dir / "checkpoint_1_10.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # a few more updates: the kill lands between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint_file(str(save_dir / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert 5 <= interrupted_at < 40

    out = _run(tmp_path, save_dir, **groups)
    assert "loaded checkpoint" in out
    reference, resumed = _losses(tmp_path / "straight"), _losses(save_dir)
    assert [resumed[s] for s in range(1, 41)] == [reference[s] for s in range(1, 41)]
    for key, value in _model(tmp_path / "straight").items():
        assert torch.equal(_model(save_dir)[key], value), key


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    save_dir = tmp_path / "run"
    groups = dict(optimization={"max_update": 12}, checkpoint={"save_interval_updates": 2})
    proc = _start(tmp_path, save_dir, env={"KILL_ON_SAVE": "2"}, **groups)
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(save_dir.glob("checkpoint_1_4.pt.*.tmp"))) == 1 and not (save_dir / "checkpoint_1_4.pt").exists()
    state = load_checkpoint_file(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 2

    _run_here(save_dir, **groups)  # takes over the killed run's lock and removes its partial file
    state = load_checkpoint_file(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 12
    assert not list(save_dir.glob("*.tmp")) and not (save_dir / "train.lock").exists()


def wav2vec2_reference(corpus, tmp_path, max_update):
    """A tiny wav2vec 2.0 trained in this process with update_freq 2 and common.seed_per_batch (in
    ``tmp_path/single``); returns its config with update_freq 1 and activation checkpointing, for 2 ranks."""
    cfg = wav2vec2_config(corpus, tmp_path / "single", max_update)
    cfg.common.seed_per_batch = True
    cfg.dataset.disable_validation = True
    main(cfg)
    cfg.optimization.update_freq = [1]
    cfg.model.checkpoint_activations = True
    return cfg


def train_wav2vec2_cli(cfg, tmp_path, launcher):
    """fairseq-hydra-train on ``cfg`` written as a yaml, started by ``launcher`` (a command prefix)."""
    OmegaConf.save(OmegaConf.create(config_to_dict(cfg)), tmp_path / "tiny.yaml")
    entry = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    return launcher([entry, "--config-dir", str(tmp_path), "--config-name", "tiny"])


def assert_same_training(save_dir, reference_dir, last_update):
    reference, params = _model(reference_dir), _model(save_dir)
    assert reference.keys() == params.keys()
    for key, value in reference.items():
        torch.testing.assert_close(params[key], value, rtol=0, atol=1e-6, msg=key)
    assert _losses(save_dir)[last_update] == pytest.approx(_losses(reference_dir)[last_update], rel=1e-5)


def test_torchrun_wav2vec2_two_ranks_equal_update_freq_two(corpus, tmp_path):
    """A tiny wav2vec 2.0 (dropout, gumbel quantizer, masks, negatives) launched by torchrun through
    fairseq-hydra-train, with activation checkpointing, equals one process with update_freq 2 without it:
    common.seed_per_batch gives every micro-batch the same draws wherever it runs."""
    cfg = wav2vec2_reference(corpus, tmp_path, 4)
    cfg.checkpoint.save_dir = str(tmp_path / "torchrun")
    cfg.distributed_training.ddp_backend = "pytorch_ddp"
    _assert_logged_once(train_wav2vec2_cli(cfg, tmp_path, _torchrun))
    assert_same_training(tmp_path / "torchrun", tmp_path / "single", 4)
