"""Files that are not checkpoints: one-line errors naming the file, trusted or not, and from a command."""

import os
import subprocess
import sys

import pytest

from fairseq_lite.errors import CheckpointError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu


def _bad_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is a text file\n")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    return [text, noise, truncated]


@pytest.mark.parametrize("trusted", [False, True])
def test_a_file_that_is_not_a_checkpoint_is_one_checkpoint_error(tmp_path, trusted):
    for path in _bad_files(tmp_path):
        with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint") as info:
            load_checkpoint_to_cpu(str(path), trust_checkpoint=trusted)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert "weights_only" not in str(info.value)  # not torch's paragraph about its defaults


def test_a_directory_says_so(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory; it must be a checkpoint file \(e\.g\. .*checkpoint_last\.pt\)"):
        load_checkpoint_to_cpu(str(tmp_path))


def test_infer_on_a_text_file_prints_one_line(tmp_path):
    path = _bad_files(tmp_path)[0]
    out = subprocess.run([sys.executable, "-m", "fairseq_lite.cli.infer", str(tmp_path), "--task", "audio_finetuning",
                          "--path", str(path), "--gen-subset", "test", "--w2l-decoder", "viterbi", "--results-path", str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and f"{path} is not a readable PyTorch checkpoint" in lines[-1]
    assert "Traceback" not in out.stderr
