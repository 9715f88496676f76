"""What a hostile user finds in the commands (issue 14): results kept when a rerun fails, one-line errors for
bad flags, files and values, and the messages they give."""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import soundfile as sf

from fairseq_lite.cli import hydra_train, infer
from fairseq_lite.cli.common import run_cli
from fairseq_lite.dataclass.legacy_parser import parse_legacy_args
from fairseq_lite.errors import ConfigError, DataError
from test_infer_cli import command, read_results
from test_infer_cli import setup as infer_setup  # noqa: F401  (module fixture: data folder and CTC checkpoint)
from test_wav2vec1_extract_features import setup as extract_setup  # noqa: F401  (wav2vec2 checkpoint, waves)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative):
    spec = importlib.util.spec_from_file_location(os.path.basename(relative)[:-3].replace("-", "_"),
                                                  os.path.join(REPO, relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_error(main, argv, capsys, monkeypatch):
    """(exit code, stderr) of ``main`` run through the commands' error edge, without HYDRA_FULL_ERROR."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [line for line in err.splitlines() if line.strip() and "file/s]" not in line]  # progress bars aside
    assert len(lines) == 1, err
    return exit_info.value.code, lines[0]


# -- infer.py -----------------------------------------------------------------------------------


def copy_data(root, tmp_path):
    """The infer fixture's data folder under tmp_path, its manifests pointing at the copy."""
    data = tmp_path / "data"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns("ckpt"))
    for tsv in data.glob("*.tsv"):
        lines = tsv.read_text().splitlines()
        tsv.write_text("\n".join([str(data)] + lines[1:]) + "\n")
    return data


def test_failed_rerun_keeps_the_earlier_results_and_suggests_infers_own_flag(infer_setup, tmp_path):
    root, path = infer_setup
    data, results = copy_data(root, tmp_path), tmp_path / "results"
    argv = command(data, path, results, "--w2l-decoder", "viterbi")
    assert infer.main(argv) == 0
    before = {p.name: p.read_bytes() for p in results.iterdir()}
    assert len(before) == 6 and all(before.values())

    (data / "u3.wav").write_bytes(b"RIFF not audio")  # the rerun fails half-way through the subset
    with pytest.raises(DataError) as failure:
        infer.main(argv)
    message = str(failure.value)
    assert "u3.wav" in message and "pass --skip-invalid-audio" in message and "task.skip_invalid_audio" not in message
    assert {p.name: p.read_bytes() for p in results.iterdir()} == before  # intact, and no temporary files left

    assert infer.main(argv + ["--skip-invalid-audio"]) == 0
    assert sorted(read_results(results, path)["ref.word"]) == [0, 1, 2, 4, 5]


def test_failed_emission_dump_keeps_the_earlier_dump(infer_setup, tmp_path):
    root, path = infer_setup
    data = copy_data(root, tmp_path)
    dump = tmp_path / "emissions.npz"
    argv = command(data, path, tmp_path / "results", "--dump-emissions", str(dump))
    assert infer.main(argv) == 0
    before = dump.read_bytes()
    (data / "u5.wav").write_bytes(b"")
    with pytest.raises(DataError, match="u5.wav"):
        infer.main(argv)
    assert dump.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["data", "emissions.npz"]


@pytest.mark.parametrize("flag, value", [("--beam", "0"), ("--nbest", "0"), ("--beam", "-3"),
                                         ("--beam-size-token", "0")])
def test_non_positive_beam_or_nbest_is_one_line_naming_the_flag(infer_setup, tmp_path, flag, value, capsys,
                                                                 monkeypatch):
    root, path = infer_setup
    argv = command(root, path, tmp_path, "--w2l-decoder", "kenlm", flag, value)
    code, err = cli_error(infer.main, argv, capsys, monkeypatch)
    assert (code, err) == (2, f"error: {flag} must be a positive number, got {value}")


def test_results_path_that_is_a_file_is_one_line(infer_setup, tmp_path, capsys, monkeypatch):
    root, path = infer_setup
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    code, err = cli_error(infer.main, command(root, path, taken, "--w2l-decoder", "viterbi"), capsys, monkeypatch)
    assert (code, err) == (2, f"error: --results-path {taken} is not a folder: give a folder to write into")
    assert taken.read_text() == "keep me"


# -- the error edge -----------------------------------------------------------------------------


def raising(exc):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc, code, expected", [
    (PermissionError(13, "Permission denied", "/data/train.tsv"), 1, "error: /data/train.tsv: Permission denied"),
    (OSError(28, "No space left on device"), 1, "error: No space left on device"),
    (IsADirectoryError(21, "Is a directory", "/data/x"), 1, "error: /data/x: Is a directory"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid"), 1, "error: a file is not UTF-8 text (invalid at byte 0): save it as UTF-8 (run with --debug to see which file)"),
    (ValueError("could not convert string to float: 'abc'"), 1,
     "error: bad value: could not convert string to float: 'abc' (run with --debug for the traceback)"),
])
def test_edge_turns_os_unicode_and_value_errors_into_one_line(exc, code, expected, capsys, monkeypatch):
    assert cli_error(raising(exc), [], capsys, monkeypatch) == (code, expected)


def test_edge_shows_the_traceback_with_debug_or_hydra_full_error(capsys, monkeypatch):
    with pytest.raises(PermissionError):
        run_cli(raising(PermissionError(13, "Permission denied", "/x")), ["--debug"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError):
        run_cli(raising(ValueError("bad")), [])
    with pytest.raises(KeyError):  # not a user's mistake: the traceback stays
        run_cli(raising(KeyError("bug")), [])


# -- configs: yaml, --cfg job, legacy flags, Hydra overrides ------------------------------------------


def write_yaml(folder, name, text):
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    return ["--config-dir", str(folder), "--config-name", name]


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys, monkeypatch):
    flags = write_yaml(tmp_path, "broken", """\
        # @package _group_
        task:
          _name: audio_pretraining
          data: /x
        model:
          _name: wav2vec2
           dropout: 0.1
        """)
    code, err = cli_error(hydra_train.main, flags, capsys, monkeypatch)
    assert (code, err) == (2, f"error: {tmp_path / 'broken.yaml'}:7: YAML syntax error: mapping values are not "
                              "allowed here (column 11)")


def test_cfg_job_with_a_broken_interpolation_names_the_key(tmp_path, capsys, monkeypatch):
    flags = write_yaml(tmp_path, "interp", """\
        task:
          _name: audio_pretraining
          data: /x
        model:
          _name: wav2vec2
          dropout: ${optimization.no_such_key}
        """)
    code, err = cli_error(hydra_train.main, flags + ["--cfg", "job"], capsys, monkeypatch)
    assert (code, err) == (2, "error: cannot resolve an interpolation at 'model.dropout': Interpolation key "
                              "'optimization.no_such_key' not found")


def test_cfg_job_still_prints_an_interpolation_to_a_missing_value(tmp_path, capsys):
    flags = write_yaml(tmp_path, "missing", """\
        task:
          _name: audio_pretraining
          data: ???
        checkpoint:
          save_dir: ${task.data}
        """)
    assert hydra_train.main(flags + ["--cfg", "job"]) == 0
    assert "save_dir: ${task.data}" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, expected", [
    ("--lr", "abc", "argument --lr: expected one float or a list of them (0.005, 0.1,10 or '[0.1, 10]'), got 'abc'"),
    ("--update-freq", "2,x", "argument --update-freq: expected one int or a list of them (2, 2,4 or '[2, 4]'), "
                             "got '2,x'"),
    ("--max-update", "abc", "argument --max-update: invalid int value: 'abc'"),
    ("--dropout", "high", "argument --dropout: invalid float value: 'high'"),
])
def test_legacy_bad_value_names_the_flag(flag, value, expected):
    with pytest.raises(ConfigError) as error:
        parse_legacy_args(["/data", "--task", "audio_pretraining", "--arch", "wav2vec2", flag, value])
    assert str(error.value) == f"{expected} (see fairseq-train --help)"


def test_unquoted_tuple_list_override_says_how_to_quote_it(tmp_path):
    flags = write_yaml(tmp_path, "run", "task:\n  _name: audio_pretraining\n  data: /x\nmodel:\n  _name: wav2vec2\n")
    with pytest.raises(ConfigError) as error:
        hydra_train.main(flags + ["model.conv_feature_layers=[(512,10,5)]", "--cfg", "job"])
    assert str(error.value) == (
        "cannot parse the override 'model.conv_feature_layers=[(512,10,5)]' (no viable alternative at input '[('): "
        "quote it for Hydra inside the shell quotes, e.g. model.conv_feature_layers='\"[(512,10,5)]\"'")
    hydra_train.main(flags + ['model.conv_feature_layers="[(512,10,5)]"', "--cfg", "job"])  # the advice works


def test_the_quoting_advice_through_the_shell(tmp_path):
    """The suggested spelling, pasted into a shell, gives the model the tuple list."""
    flags = write_yaml(tmp_path, "run", "task:\n  _name: audio_pretraining\n  data: /x\nmodel:\n  _name: wav2vec2\n")
    line = (f"{sys.executable} -m fairseq_lite.cli.hydra_train {' '.join(flags)} --cfg job "
            "model.conv_feature_layers='\"[(512, 10, 5), (512, 3, 2)]\"'")
    result = subprocess.run(line, shell=True, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "conv_feature_layers: '[(512, 10, 5), (512, 3, 2)]'" in result.stdout


# -- feature extraction scripts ------------------------------------------------------------------


def test_extract_features_on_a_corrupt_file_names_it(extract_setup, tmp_path, capsys, monkeypatch):
    root, checkpoint, _ = extract_setup
    waves = tmp_path / "waves"
    shutil.copytree(root / "waves", waves)
    (waves / "spk" / "u1.wav").write_bytes(b"RIFF\x00\x00garbage")
    script = load_script("scripts/extract_features.py")
    code, err = cli_error(script.main, ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"),
                                        str(waves)], capsys, monkeypatch)
    assert code == 1
    assert err.startswith(f"error: {waves / 'spk' / 'u1.wav'}: cannot read the audio file (")
    assert err.endswith("remove it from the inputs")


def test_extract_features_h5_rerun_that_fails_keeps_the_earlier_file(extract_setup, tmp_path):
    root, checkpoint, _ = extract_setup
    waves = tmp_path / "waves"
    shutil.copytree(root / "waves", waves)
    script = load_script("scripts/extract_features.py")
    argv = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--format", "h5", str(waves)]
    assert script.main(argv) == 0
    before = (tmp_path / "out" / "features.h5").read_bytes()
    sf.write(waves / "spk" / "u9.wav", [0.0] * 0, 16000)  # an empty file: the rerun stops at it
    with pytest.raises(DataError, match="u9.wav"):
        script.main(argv)
    assert os.listdir(tmp_path / "out") == ["features.h5"]
    assert (tmp_path / "out" / "features.h5").read_bytes() == before


@pytest.mark.parametrize("script, flag, extra", [
    ("scripts/extract_features.py", "--output", ["--checkpoint", "x.pt", "in.wav"]),
    ("examples/wav2vec/wav2vec_featurize.py", "--output", ["--input", "in", "--model", "x.pt", "--split", "train"]),
    ("examples/wav2vec/vq-wav2vec_featurize.py", "--output-dir",
     ["--data-dir", "in", "--checkpoint", "x.pt", "--splits", "train", "--extension", "tsv"]),
])
def test_output_that_is_a_file_is_one_line(script, flag, extra, tmp_path, capsys, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    code, err = cli_error(load_script(script).main, [flag, str(taken), *extra], capsys, monkeypatch)
    assert (code, err) == (2, f"error: {flag} {taken} is not a folder: give a folder to write into")
    inside = taken / "sub"
    code, err = cli_error(load_script(script).main, [flag, str(inside), *extra], capsys, monkeypatch)
    assert (code, err) == (2, f"error: {flag} {inside} is not a folder ({taken} is a file): give a folder to write into")
    assert taken.read_text() == "keep me"
