"""The data-prep tools end to end: wav2vec_manifest.py, libri_labels.py, make_labels.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from fairseq_lite.data import Dictionary
from fairseq_lite.data.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True)


def write_audio(path, n):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32), 16000)


def test_manifest_tool_split_determinism_summary_and_errors(tmp_path):
    audio = tmp_path / "audio"
    for i in range(40):
        write_audio(audio / f"spk{i % 3}" / f"utt{i}.flac", 1600 + i)
    (audio / "broken.flac").write_bytes(b"not flac")
    write_audio(audio / "other.wav", 1000)
    out1, out2 = tmp_path / "m1", tmp_path / "m2"
    r1 = run("examples/wav2vec/wav2vec_manifest.py", audio, "--dest", out1, "--ext", "flac", "--valid-percent", 0.25, "--workers", 2)
    assert r1.returncode == 0, r1.stderr
    assert "40 files" in r1.stdout and "1 could not be read" in r1.stdout and "hours" in r1.stdout
    run("examples/wav2vec/wav2vec_manifest.py", audio, "--dest", out2, "--valid-percent", 0.25, "--workers", 1)
    for split in ("train.tsv", "valid.tsv"):
        assert (out1 / split).read_text() == (out2 / split).read_text()  # same seed, same split
    train, valid = load_manifest(str(out1 / "train.tsv")), load_manifest(str(out1 / "valid.tsv"))
    assert train.root == os.path.realpath(audio) and len(train.sizes) + len(valid.sizes) == 40
    assert 0 < len(valid.sizes) < 20
    names = {train.names[i] for i in range(len(train.sizes))} | {valid.names[i] for i in range(len(valid.sizes))}
    assert "spk1/utt1.flac" in names and "broken.flac" not in names
    lines = (out1 / "train.tsv").read_text().splitlines()[1:] + (out1 / "valid.tsv").read_text().splitlines()[1:]
    line = next(l for l in lines if l.startswith("spk0/utt0.flac"))
    assert line == "spk0/utt0.flac\t1600"
    other_seed = tmp_path / "m3"
    run("examples/wav2vec/wav2vec_manifest.py", audio, "--dest", other_seed, "--valid-percent", 0.25, "--seed", 7)
    assert (other_seed / "valid.tsv").read_text() != (out1 / "valid.tsv").read_text()

    only_spk2 = tmp_path / "m5"
    run("examples/wav2vec/wav2vec_manifest.py", audio, "--dest", only_spk2, "--valid-percent", 0, "--path-must-contain", "spk2")
    kept = [line.split("\t")[0] for line in (only_spk2 / "train.tsv").read_text().splitlines()[1:]]
    assert len(kept) == 13 and all(name.startswith("spk2/") for name in kept)

    empty = run("examples/wav2vec/wav2vec_manifest.py", audio, "--dest", tmp_path / "m4", "--ext", "mp3")
    assert empty.returncode == 1 and "error: no *.mp3 files under" in empty.stderr and str(audio.name) in empty.stderr
    assert not (tmp_path / "m4" / "train.tsv").exists()


def test_libri_labels_on_librispeech_tree(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    write_audio(chapter / "84-121123-0000.flac", 2000)
    write_audio(chapter / "84-121123-0001.flac", 3000)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n")
    root = tmp_path / "LibriSpeech"
    tsv = tmp_path / "dev_clean.tsv"
    tsv.write_text(f"{root}\ndev-clean/84/121123/84-121123-0001.flac\t3000\ndev-clean/84/121123/84-121123-0000.flac\t2000\n")
    result = run("examples/wav2vec/libri_labels.py", tsv, "--output-dir", tmp_path / "labels", "--output-name", "dev_clean")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "labels" / "dev_clean.wrd").read_text() == "BUT IN LESS THAN FIVE MINUTES\nGO DO YOU HEAR\n"
    assert (tmp_path / "labels" / "dev_clean.ltr").read_text() == (
        "B U T | I N | L E S S | T H A N | F I V E | M I N U T E S |\nG O | D O | Y O U | H E A R |\n"
    )
    tsv.write_text(f"{root}\ndev-clean/84/121123/84-121123-0009.flac\t3000\n")
    missing = run("examples/wav2vec/libri_labels.py", tsv, "--output-dir", tmp_path / "labels", "--output-name", "x")
    assert missing.returncode == 1 and "dev_clean.tsv:2: utterance 84-121123-0009 is not in" in missing.stderr


def test_make_labels_for_another_language(tmp_path):
    for name in ("a", "b", "c"):
        write_audio(tmp_path / "clips" / f"{name}.wav", 1000)
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{tmp_path / 'clips'}\na.wav\t1000\nb.wav\t1000\nc.wav\t1000\n")
    (tmp_path / "text.txt").write_text("a\tÇa va, très bien!\nb ÉTÉ  chaud\nc.wav l'été\n")
    out = tmp_path / "data"
    result = run("scripts/make_labels.py", tsv, "--transcripts", tmp_path / "text.txt", "--output-dir", out,
                 "--output-name", "train", "--case", "upper", "--remove-punctuation")
    assert result.returncode == 0, result.stderr
    assert (out / "train.wrd").read_text(encoding="utf-8") == "ÇA VA TRÈS BIEN\nÉTÉ CHAUD\nL'ÉTÉ\n"
    assert (out / "train.ltr").read_text(encoding="utf-8").splitlines()[2] == "L ' É T É |"
    d = Dictionary.load(out / "dict.ltr.txt")
    assert d.symbols[4] == "|" and d.count[4] == 7 and "É" in d and "Ç" in d
    counts = d.count[4:]
    assert counts == sorted(counts, reverse=True)
    (tmp_path / "text.txt").write_text("a hello\nb hi\n")
    missing = run("scripts/make_labels.py", tsv, "--transcripts", tmp_path / "text.txt", "--output-dir", out,
                  "--output-name", "train")
    assert missing.returncode == 1 and "train.tsv:4: no transcript for c.wav" in missing.stderr
    sidecar = run("scripts/make_labels.py", tsv, "--sidecar-ext", "txt", "--output-dir", out, "--output-name", "t")
    assert sidecar.returncode == 1 and "a.txt does not exist" in sidecar.stderr
