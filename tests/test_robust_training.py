"""What a hostile user does to a training run (issue 14): empty epochs, two runs in one save_dir, a full disk,
an empty dictionary, NaN audio, errors inside DataLoader workers, a directory given as a checkpoint."""

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import train_toy
from fairseq_lite.data.iterators import EpochBatchIterator
from fairseq_lite.data.raw_audio_dataset import FileAudioDataset
from fairseq_lite.errors import CheckpointError, ConfigError, DataError, FairseqLiteError
from fairseq_lite.tasks import setup_task
from fairseq_lite.training import checkpoint
from fairseq_lite.training.checkpoint import LOCK_NAME, SaveDirLock, atomic_copy, atomic_save
from fairseq_lite.training.train import main


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# -- 1. epochs without a batch ---------------------------------------------------------------------------


def test_max_tokens_below_every_example_stops_instead_of_looping(tmp_path):
    # toy examples have 2..8 samples: max_tokens=1 filters all of them (before: 3 empty epochs, rc 0)
    cfg = train_toy.toy_config(tmp_path, dataset={"batch_size": None, "max_tokens": 1, "disable_validation": True},
                               optimization={"max_epoch": 3, "max_update": 0})
    with pytest.raises(DataError) as exc:
        main(cfg)
    message = _one_line(exc)
    assert message.startswith("dataset.max_tokens=1 is below every example of the training split 'train' "
                              "(the shortest has 2 samples)")
    assert not os.path.exists(tmp_path / LOCK_NAME)


def test_validation_split_without_a_batch_is_named_before_training(tmp_path):
    cfg = train_toy.toy_config(tmp_path, dataset={"max_tokens_valid": 1, "skip_invalid_size_inputs_valid_test": True})
    with pytest.raises(DataError) as exc:
        main(cfg)
    message = _one_line(exc)
    assert "dataset.max_tokens_valid=1 is below every example of the validation split 'valid'" in message
    assert not os.path.exists(tmp_path / "checkpoint_last.pt")  # stopped before the first update


# -- 2. one training per save_dir ------------------------------------------------------------------------

HOLDER = """
import sys, time
from fairseq_lite.training.checkpoint import SaveDirLock
SaveDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_training_in_the_same_save_dir_names_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as exc:
            main(train_toy.toy_config(tmp_path))
        message = _one_line(exc)
        assert f"is in use by another training (process {holder.pid} on host {socket.gethostname()}" in message
        assert str(tmp_path / LOCK_NAME) in message
        assert not os.path.exists(tmp_path / "checkpoint_last.pt")
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING, logger="fairseq_lite.checkpoint"):
        main(train_toy.toy_config(tmp_path, optimization={"max_update": 2}))
    assert any(f"taking over the stale lock {tmp_path / LOCK_NAME} of process {dead.pid}" in r.getMessage()
               for r in caplog.records)
    assert _load(tmp_path / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == 2
    assert not os.path.exists(tmp_path / LOCK_NAME)  # released at exit


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": "2024-01-02 03:04:05"}))
    with pytest.raises(ConfigError, match=r"\(process 1 on host gpu-node-7, started 2024-01-02 03:04:05; lock file"):
        SaveDirLock(str(tmp_path)).acquire()
    lock = SaveDirLock(str(tmp_path / "free"))
    os.makedirs(tmp_path / "free")
    lock.acquire()
    assert json.loads((tmp_path / "free" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path / "free") == []


def test_atomic_writes_use_temporary_names_of_their_own(tmp_path):
    path = str(tmp_path / "checkpoint_last.pt")
    os.makedirs(path + ".tmp")  # the name every writer shared before: now it is nobody's
    atomic_save({"x": torch.ones(2)}, path)
    atomic_copy(path, str(tmp_path / "checkpoint_best.pt"))
    assert torch.equal(_load(tmp_path / "checkpoint_best.pt")["x"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pt", "checkpoint_last.pt", "checkpoint_last.pt.tmp"]


# -- 3. disk full while saving ---------------------------------------------------------------------------


def _disk_full_after_some_bytes(obj, f, **kwargs):
    f.write(b"PK\x03\x04 partial checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    main(train_toy.toy_config(tmp_path, optimization={"max_update": 2}))
    before = (tmp_path / "checkpoint_last.pt").read_bytes()
    monkeypatch.setattr(torch, "save", _disk_full_after_some_bytes)
    with pytest.raises(FairseqLiteError) as exc:
        main(train_toy.toy_config(tmp_path, optimization={"max_update": 4}))
    message = _one_line(exc)
    assert message.startswith(f"cannot write checkpoint {tmp_path}{os.sep}checkpoint_")
    assert ".pt: No space left on device; the partial file was removed" in message
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or n == LOCK_NAME]


def test_disk_full_while_copying_removes_the_partial_copy(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    atomic_save({"x": torch.zeros(3)}, src)
    atomic_save({"x": torch.ones(3)}, dst)

    def full(fin, fout, length=0):
        fout.write(fin.read(10))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(FairseqLiteError, match=rf"^cannot write checkpoint {dst}: No space left on device;"):
        atomic_copy(src, dst)
    assert torch.equal(_load(dst)["x"], torch.ones(3)) and sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]
