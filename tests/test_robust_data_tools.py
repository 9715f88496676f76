"""The data-prep tools against a hostile user (issue 14): link loops, unlistable names, stale manifests, files
that are not UTF-8 or cannot be read, outputs that are files — each a one-line error or a kept file."""

import os

import pytest

from fairseq_lite.data.labels import libri_transcripts, write_label_files
from fairseq_lite.data.manifest import load_manifest
from fairseq_lite.errors import DataError
from fairseq_lite.file_io import AtomicOutputs
from test_data_scripts import run, write_audio

MANIFEST = "examples/wav2vec/wav2vec_manifest.py"
LIBRI = "examples/wav2vec/libri_labels.py"


def entries(tsv):
    manifest = load_manifest(str(tsv))
    return sorted(manifest.names[i] for i in range(len(manifest.sizes)))


def one_line_error(result, code):
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- wav2vec_manifest.py ------------------------------------------------------------------------


def test_link_loops_and_linked_folders_list_each_file_once(tmp_path):
    audio, elsewhere = tmp_path / "audio", tmp_path / "elsewhere"
    write_audio(audio / "a" / "x.flac", 1000)
    write_audio(audio / "b" / "y.flac", 1100)
    write_audio(elsewhere / "z.flac", 1200)
    os.symlink("..", audio / "a" / "up")  # a loop back to the root (fairseq's glob lists x and y 41 times)
    os.symlink(elsewhere, audio / "linked")  # a folder outside the root is followed
    os.symlink(elsewhere, audio / "linked_again")
    result = run(MANIFEST, audio, "--dest", tmp_path / "m", "--valid-percent", 0)
    assert result.returncode == 0, result.stderr
    assert entries(tmp_path / "m" / "train.tsv") == ["a/x.flac", "b/y.flac", "linked/z.flac"]


def test_names_a_tsv_cannot_hold_are_left_out_with_a_warning(tmp_path):
    audio = tmp_path / "audio"
    for name in ("good.flac", "tab\there.flac", "new\nline.flac", "line\u2028separator.flac"):
        write_audio(audio / name, 1000)
    result = run(MANIFEST, audio, "--dest", tmp_path / "m", "--valid-percent", 0)
    assert result.returncode == 0, result.stderr
    assert entries(tmp_path / "m" / "train.tsv") == ["good.flac", "line\u2028separator.flac"]
    reason = "its name holds a tab or line break, which a .tsv manifest cannot hold: rename the file"
    for name in ("new\nline.flac", "tab\there.flac"):
        assert f"left out {ascii(str(audio / name))}: {reason}" in result.stdout
    assert "2 could not be read and were left out" in result.stdout


def test_rerun_with_valid_percent_0_removes_the_stale_valid_tsv(tmp_path):
    audio, dest = tmp_path / "audio", tmp_path / "m"
    for i in range(20):
        write_audio(audio / f"u{i}.flac", 1000 + i)
    assert run(MANIFEST, audio, "--dest", dest, "--valid-percent", 0.3).returncode == 0
    assert (dest / "valid.tsv").exists()
    result = run(MANIFEST, audio, "--dest", dest, "--valid-percent", 0)
    assert result.returncode == 0, result.stderr
    assert not (dest / "valid.tsv").exists() and len(entries(dest / "train.tsv")) == 20
    assert f"removing {dest / 'valid.tsv'} from an earlier run: --valid-percent 0 puts every file in train.tsv" \
        in result.stdout
    assert sorted(os.listdir(dest)) == ["train.tsv"]


def test_dest_that_is_a_file_is_one_line(tmp_path):
    write_audio(tmp_path / "audio" / "u.flac", 1000)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    line = one_line_error(run(MANIFEST, tmp_path / "audio", "--dest", taken), 2)
    assert line == f"error: --dest {taken} is not a folder: give a folder to write into"
    assert taken.read_text() == "keep me"


def test_manifest_that_is_not_utf8_names_the_file_and_line(tmp_path):
    write_audio(tmp_path / "caf\u00e9.flac", 1000)
    write_audio(tmp_path / "ok.flac", 1000)
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(f"{tmp_path}\nok.flac\t1000\ncaf\u00e9.flac\t1000\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        load_manifest(str(tsv))
    assert str(error.value) == (f"{tsv}:3: the manifest is not UTF-8 text (byte 0xe9); convert it, e.g. "
                                "iconv -f latin1 -t utf-8")


def test_manifest_that_cannot_be_read_is_a_data_error(tmp_path):
    (tmp_path / "train.tsv").mkdir()
    with pytest.raises(DataError, match=r"cannot read manifest .*train.tsv: Is a directory"):
        load_manifest(str(tmp_path / "train.tsv"))


# -- libri_labels.py ----------------------------------------------------------------------------


@pytest.fixture()
def libri(tmp_path):
    """A LibriSpeech chapter with two utterances, its manifest, and the path of its trans.txt."""
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    write_audio(chapter / "84-121123-0000.flac", 2000)
    write_audio(chapter / "84-121123-0001.flac", 3000)
    tsv = tmp_path / "dev.tsv"
    tsv.write_text(f"{tmp_path / 'LibriSpeech'}\ndev-clean/84/121123/84-121123-0000.flac\t2000\n"
                   "dev-clean/84/121123/84-121123-0001.flac\t3000\n")
    return tsv, chapter / "84-121123.trans.txt"


def test_transcript_line_with_no_text_names_the_file_and_line(libri, tmp_path):
    tsv, trans = libri
    trans.write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001\n")
    line = one_line_error(run(LIBRI, tsv, "--output-dir", tmp_path / "out", "--output-name", "dev"), 1)
    assert line == f"error: {trans}:2: utterance 84-121123-0001 has no text: expected '<utterance id> <WORDS ...>'"
    assert not (tmp_path / "out").exists()


def test_latin1_transcript_names_the_file_and_line(libri, tmp_path):
    tsv, trans = libri
    trans.write_bytes("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 CAF\u00c9 AU LAIT\n".encode("latin-1"))
    line = one_line_error(run(LIBRI, tsv, "--output-dir", tmp_path / "out", "--output-name", "dev"), 1)
    assert line == (f"error: {trans}:2: the transcript file is not UTF-8 text (byte 0xc9); convert it, e.g. "
                    "iconv -f latin1 -t utf-8")


def test_unreadable_transcript_and_manifest_are_one_line(libri, tmp_path):
    tsv, trans = libri
    trans.mkdir()  # tests run as root, where chmod 000 does not stop reading: a folder cannot be read either
    line = one_line_error(run(LIBRI, tsv, "--output-dir", tmp_path / "out", "--output-name", "dev"), 1)
    assert line == f"error: cannot read transcript file {trans}: Is a directory"
    line = one_line_error(run(LIBRI, tmp_path, "--output-dir", tmp_path / "out", "--output-name", "dev"), 1)
    assert line == f"error: cannot read manifest {tmp_path}: Is a directory"


def test_output_dir_that_is_a_file_is_one_line(libri, tmp_path):
    tsv, trans = libri
    trans.write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n")
    taken = tmp_path / "labels"
    taken.write_text("keep me")
    line = one_line_error(run(LIBRI, tsv, "--output-dir", taken, "--output-name", "dev"), 2)
    assert line == f"error: --output-dir {taken} is not a folder: give a folder to write into"
    assert taken.read_text() == "keep me"


def test_label_files_are_replaced_only_when_complete(libri, tmp_path):
    tsv, trans = libri
    trans.write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n")
    write_label_files(libri_transcripts(str(tsv)), str(tmp_path), "dev")
    before = {ext: (tmp_path / f"dev.{ext}").read_text() for ext in ("wrd", "ltr")}

    def failing():
        yield "A NEW LINE"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_label_files(failing(), str(tmp_path), "dev")
    assert {ext: (tmp_path / f"dev.{ext}").read_text() for ext in ("wrd", "ltr")} == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


# -- the atomic output set ----------------------------------------------------------------------


def test_atomic_outputs_commit_together_or_not_at_all(tmp_path):
    old, stale = tmp_path / "a.txt", tmp_path / "stale.txt"
    old.write_text("old")
    stale.write_text("stale")
    with pytest.raises(RuntimeError):
        with AtomicOutputs() as outputs:
            outputs.open(str(old)).write("new")
            outputs.open(str(tmp_path / "sub" / "b.txt")).write("new b")
            outputs.remove(str(stale))
            raise RuntimeError("decoding failed")
    assert old.read_text() == "old" and stale.read_text() == "stale"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "stale.txt"]
    with AtomicOutputs() as outputs:
        outputs.open(str(old)).write("new")
        outputs.open(str(tmp_path / "sub" / "b.txt"), "wb").write(b"new b")
        outputs.remove(str(stale))
    assert old.read_text() == "new" and (tmp_path / "sub" / "b.txt").read_text() == "new b"
    assert not stale.exists() and sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "b.txt"]
