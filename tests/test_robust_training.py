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
from fairseq_lite.file_io import atomic_copy, atomic_save
from fairseq_lite.tasks import setup_task
from fairseq_lite.training.checkpoint import LOCK_NAME, SaveDirLock
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
    with pytest.raises(DataError, match=r"^validation split 'valid': example \d+ has \d+ tokens \(samples\), more "
                                        r"than max_tokens=1"):
        main(train_toy.toy_config(tmp_path, dataset={"max_tokens_valid": 1}))


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


# -- 4. a dictionary without symbols ---------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_label_dictionary_is_an_error_naming_the_file(tmp_path, content):
    (tmp_path / "dict.ltr.txt").write_text(content)
    task = setup_task({"_name": "audio_finetuning", "data": str(tmp_path), "labels": "ltr"})
    with pytest.raises(DataError) as exc:
        task.target_dictionary
    assert _one_line(exc).startswith(f"dictionary file {tmp_path / 'dict.ltr.txt'} lists no symbols:")


# -- 5. NaN / inf audio ----------------------------------------------------------------------------------


def _manifest(folder, clips):
    """``train.tsv`` over float wav files ``name -> samples`` written in ``folder``."""
    lines = [str(folder)]
    for name, wav in clips.items():
        sf.write(folder / name, wav, 16000, subtype="FLOAT")
        lines.append(f"{name}\t{len(wav)}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return str(folder / "train.tsv")


def test_nan_or_inf_audio_names_the_file_and_manifest_line(tmp_path, caplog):
    good = np.random.RandomState(0).uniform(-0.5, 0.5, 800).astype(np.float32)
    bad = good.copy()
    bad[[7, 9]] = [np.nan, np.inf]
    manifest = _manifest(tmp_path, {"good.wav": good, "bad.wav": bad})
    dataset = FileAudioDataset(manifest, sample_rate=16000)
    assert torch.isfinite(dataset[0]["source"]).all()
    with pytest.raises(DataError) as exc:
        dataset[1]
    assert _one_line(exc) == (f"{manifest}:3: {tmp_path / 'bad.wav'}: 2 of 800 samples are NaN or inf (the first "
                              "at sample 7); the file is corrupt (set task.skip_invalid_audio=true to skip bad files)")
    skipping = FileAudioDataset(manifest, sample_rate=16000, skip_invalid=True)
    with caplog.at_level(logging.WARNING):
        assert skipping[1]["source"] is None
    assert any(f"{manifest}:3: {tmp_path / 'bad.wav'}: 2 of 800 samples are NaN or inf" in r.getMessage()
               for r in caplog.records)


# -- 6. errors raised in DataLoader workers --------------------------------------------------------------


def test_error_in_a_dataloader_worker_arrives_as_its_own_message(tmp_path):
    good = np.zeros(800, dtype=np.float32)
    manifest = _manifest(tmp_path, {"a.wav": good, "b.wav": good})
    (tmp_path / "b.wav").write_bytes(b"RIFF not really a wav file")
    dataset = FileAudioDataset(manifest, sample_rate=16000)
    itr = EpochBatchIterator(dataset, dataset.collater, [[0], [1]], num_workers=1).next_epoch_itr(shuffle=False)
    assert next(itr)["id"].tolist() == [0]
    with pytest.raises(DataError) as exc:
        next(itr)
    message = _one_line(exc)
    assert message.startswith(f"{manifest}:3: {tmp_path / 'b.wav'}: cannot decode audio (")
    assert message.endswith("(set task.skip_invalid_audio=true to skip bad files)")
    assert "Traceback" in str(exc.value.__cause__)  # still there for --debug


# -- 8. a directory where a checkpoint file belongs ------------------------------------------------------


def test_directory_as_w2v_path_or_restore_file_says_a_file_is_expected(tmp_path):
    from fairseq_lite.dataclass.initialize import finalize_config

    (tmp_path / "dict.ltr.txt").write_text("A 1\nB 1\n")
    cfg = finalize_config({"task": {"_name": "audio_finetuning", "data": str(tmp_path), "labels": "ltr"},
                           "model": {"_name": "wav2vec_ctc", "w2v_path": str(tmp_path)}})
    with pytest.raises(CheckpointError) as exc:
        setup_task(cfg.task).build_model(cfg.model)
    assert _one_line(exc) == (f"model.w2v_path {tmp_path} is a directory; it must be the pretrained checkpoint file "
                              f"itself (e.g. {tmp_path / 'checkpoint_best.pt'})")
    with pytest.raises(CheckpointError, match=rf"^checkpoint.restore_file {tmp_path} is a directory; it must be a "
                                              rf"checkpoint file \(e.g. {tmp_path / 'checkpoint_last.pt'}\)$"):
        main(train_toy.toy_config(tmp_path / "run", checkpoint={"restore_file": str(tmp_path)}))
