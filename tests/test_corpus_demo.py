"""The demo speech corpus (demo/corpus) and its generator, scripts/make_speech_corpus.py.

The checks of the committed corpus need nothing but Python; the generator runs only where espeak-ng is on PATH.
"""

import importlib.util
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.data.labels import letters

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "demo" / "corpus"
sys.path.insert(0, str(REPO / "scripts"))
import make_speech_corpus as msc  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
FILE_NAME = re.compile(r"(\d+)-(\d+)-(\d{4})\.flac")


def read_corpus(root: Path) -> dict:
    """Everything a test needs about a corpus on disk; asserts the LibriSpeech layout on the way."""
    splits = {}
    for split in msc.SPLITS:
        utts = {}
        for path in sorted((root / split).rglob("*.flac")):
            speaker, chapter, _ = FILE_NAME.fullmatch(path.name).groups()
            assert path.parent.relative_to(root / split) == Path(speaker) / chapter, path
            info = sf.info(path)
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1), path
            utts[path.stem] = {"speaker": int(speaker), "seconds": info.frames / 16000, "path": path}
        for trans in (root / split).rglob("*.trans.txt"):
            assert trans.name == f"{trans.parent.parent.name}-{trans.parent.name}.trans.txt", trans
            for line in trans.read_text().splitlines():
                utt_id, text = line.split(" ", 1)
                assert re.fullmatch(r"[A-Z]+( [A-Z]+)*", text), line
                assert utts[utt_id]["path"].parent == trans.parent, line
                utts[utt_id]["text"] = text
        assert all("text" in u for u in utts.values()), "every audio file has a transcript line"
        splits[split] = utts
    return splits


def speakers_table(root: Path) -> list[dict]:
    rows = []
    for line in (root / "SPEAKERS.TXT").read_text().splitlines():
        if not line.startswith(";"):
            speaker, sex, subset, minutes, name = (field.strip() for field in line.split("|"))
            rows.append({"id": int(speaker), "sex": sex, "subset": subset, "minutes": float(minutes), "name": name})
    return rows


@pytest.fixture(scope="module")
def corpus():
    return read_corpus(CORPUS)


def test_splits_have_the_planned_size(corpus):
    speakers = {split: {s.id for s in msc.SPEAKERS if s.split == split} for split in msc.SPLITS}
    for split, utts in corpus.items():
        assert {u["speaker"] for u in utts.values()} == speakers[split]
        assert len(utts) == len(speakers[split]) * msc.DEFAULT_UTTS_PER_SPEAKER[split]
        assert all(0.5 < u["seconds"] < 10 for u in utts.values())
    minutes = {split: sum(u["seconds"] for u in utts.values()) / 60 for split, utts in corpus.items()}
    assert 9 < minutes["train"] < 12
    assert 1 < minutes["valid"] < 3 and 1.5 < minutes["test"] < 3


def test_corpus_fits_the_size_budget():
    assert sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()) < 15e6


def test_audio_is_trimmed_speech_at_speech_levels(corpus):
    for utts in corpus.values():
        for utt in list(utts.values())[::7]:
            audio, _ = sf.read(utt["path"])
            margin = int(msc.TRIM_MARGIN_S * 16000)
            assert np.abs(audio[: margin - 160]).max() < 1e-3, "0.1 s of leading silence"
            rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
            assert -34 < rms_db < -20 and np.abs(audio).max() <= msc.PEAK_LIMIT + 1e-4


def test_valid_and_test_voices_are_not_in_train(corpus):
    rows = speakers_table(CORPUS)
    for row in rows:
        assert row["subset"] in msc.SPLITS and row["sex"] in "MF"
        utts = [u for u in corpus[row["subset"]].values() if u["speaker"] == row["id"]]
        assert row["minutes"] == pytest.approx(sum(u["seconds"] for u in utts) / 60, abs=0.006)
    variants = {split: {r["name"].split()[1].split("+")[1] for r in rows if r["subset"] == split} for split in msc.SPLITS}
    assert not variants["train"] & variants["valid"] and not variants["train"] & variants["test"]
    assert not variants["valid"] & variants["test"]


def test_transcripts_use_the_vocabulary_and_every_letter(corpus):
    vocabulary = set(msc.vocabulary())
    assert 60 <= len(vocabulary) <= 150
    words = {split: Counter(w for u in utts.values() for w in u["text"].split()) for split, utts in corpus.items()}
    assert set(words["train"]) == vocabulary, "train says every word of the vocabulary"
    assert set(words["valid"]) <= vocabulary and set(words["test"]) <= vocabulary
    assert set("".join(words["train"])) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    texts = [u["text"] for utts in corpus.values() for u in utts.values()]
    assert len(set(texts)) == len(texts), "no sentence is spoken twice"


def test_dict_ltr_counts_the_train_letters_in_fairseq_format(corpus):
    lines = (CORPUS / "dict.ltr.txt").read_text().splitlines()
    entries = [(symbol, int(count)) for symbol, count in (line.split(" ") for line in lines)]
    counts = [count for _, count in entries]
    assert counts == sorted(counts, reverse=True)
    dictionary = Dictionary.load(CORPUS / "dict.ltr.txt")
    assert len(dictionary) == 4 + 27 and dictionary.index("|") == 4
    for utts in corpus.values():
        for utt in utts.values():
            ids = dictionary.encode_line(letters(utt["text"]), append_eos=False)
            assert dictionary.unk() not in ids.tolist()


def test_lm_text_is_more_of_the_grammar_without_held_out_sentences(corpus):
    lines = (CORPUS / "lm_text.txt").read_text().splitlines()
    audio_texts = {split: {u["text"] for u in utts.values()} for split, utts in corpus.items()}
    assert len(lines) > 10 * sum(len(t) for t in audio_texts.values())
    assert {w for line in lines for w in line.split()} == set(msc.vocabulary())
    assert not set(lines) & (audio_texts["valid"] | audio_texts["test"])


def test_committed_text_is_what_the_generator_plans(corpus):
    """Transcripts and LM text are reproducible without espeak-ng."""
    utterances, lm_lines = msc.plan_corpus(msc.DEFAULT_SEED, msc.DEFAULT_UTTS_PER_SPEAKER, msc.DEFAULT_LM_SENTENCES)
    assert {u.id: u.text for u in utterances} == {k: u["text"] for utts in corpus.values() for k, u in utts.items()}
    assert all((CORPUS / u.path).is_file() for u in utterances)
    assert (CORPUS / "lm_text.txt").read_text() == "".join(line + "\n" for line in lm_lines)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "wav2vec" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fairseq_preparation_scripts_read_the_corpus(corpus, tmp_path):
    """wav2vec_manifest.py + libri_labels.py, as make demo runs them, give labels that match the corpus."""
    manifest, labels = load_example("wav2vec_manifest"), load_example("libri_labels")
    for split in ("train", "valid"):
        assert manifest.main([str(CORPUS / split), "--dest", str(tmp_path / split), "--valid-percent", "0"]) == 0
        tsv = tmp_path / split / "train.tsv"
        assert labels.main([str(tsv), "--output-dir", str(tmp_path), "--output-name", split]) == 0
        root, *entries = tsv.read_text().splitlines()
        assert Path(root) == (CORPUS / split).resolve() and len(entries) == len(corpus[split])
        wrd = (tmp_path / f"{split}.wrd").read_text().splitlines()
        for entry, text in zip(entries, wrd):
            rel, frames = entry.split("\t")
            utt = corpus[split][Path(rel).stem]
            assert text == utt["text"] and int(frames) == round(utt["seconds"] * 16000)
    committed = dict(line.split(" ") for line in (CORPUS / "dict.ltr.txt").read_text().splitlines())
    train_letters = Counter((tmp_path / "train.ltr").read_text().split())
    assert {symbol: int(count) for symbol, count in committed.items()} == train_letters


def test_grammar_reaches_exactly_the_vocabulary():
    rng = msc.random.Random(0)
    produced = {w for _ in range(20000) for w in msc.make_sentence(rng).split()}
    assert produced == set(msc.vocabulary())


def test_trim_silence_leaves_a_fixed_margin():
    """0.1 s of silence (to the 10 ms frame) stays on each side, whatever there was before."""
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 200 * (np.arange(rate) + 1) / rate)
    margin, frame = int(msc.TRIM_MARGIN_S * rate), rate // 100
    for lead, trail in [(0, rate // 2), (rate // 3, rate), (0, 0), (12345, 77)]:
        trimmed = msc.trim_silence(np.concatenate([np.zeros(lead), tone, np.zeros(trail)]), rate)
        start, end = np.flatnonzero(trimmed)[[0, -1]]
        assert margin <= start < margin + frame and margin <= len(trimmed) - 1 - end < margin + frame
        assert np.array_equal(trimmed[start:end + 1], tone)


@needs_espeak
def test_generator_is_deterministic_for_a_seed(tmp_path):
    counts = {"train": 1, "valid": 1, "test": 1}
    first = msc.generate(tmp_path / "a", 7, counts, 30, workers=2, overwrite=False)
    msc.generate(tmp_path / "b", 7, counts, 30, workers=2, overwrite=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == len(first) + len({u.directory for u in first}) + 3
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    generated = read_corpus(tmp_path / "a")
    assert {k: u["text"] for utts in generated.values() for k, u in utts.items()} == {u.id: u.text for u in first}
    assert all(0.5 < u["seconds"] < 10 for utts in generated.values() for u in utts.values())

    other = msc.generate(tmp_path / "c", 8, counts, 30, workers=2, overwrite=False)
    assert [u.text for u in other] != [u.text for u in first]


@needs_espeak
def test_generator_refuses_to_overwrite_unless_asked(tmp_path):
    counts = {"train": 1, "valid": 0, "test": 0}
    msc.generate(tmp_path, 1, counts, 5, workers=1, overwrite=False)
    with pytest.raises(SystemExit, match="--overwrite"):
        msc.generate(tmp_path, 1, counts, 5, workers=1, overwrite=False)
    durations = msc.generate(tmp_path, 2, {"train": 0, "valid": 1, "test": 0}, 5, workers=1, overwrite=True)
    assert not (tmp_path / "train").exists()
    assert sorted(p.stem for p in tmp_path.rglob("*.flac")) == sorted(u.id for u in durations)


def test_demo_pool_and_unseen_voices_plan():
    """make demo's extra splits: a pool ~7x the train utterances with more voices, no valid/test voice in it,
    unseen voices of no other split, no sentence of a labelled split (nor, for unseen, of lm_text.txt)."""
    extra = msc.plan_extra(msc.DEFAULT_SEED, msc.DEFAULT_EXTRA_UTTS)
    labelled, lm_lines = msc.plan_corpus(msc.DEFAULT_SEED, msc.DEFAULT_UTTS_PER_SPEAKER, msc.DEFAULT_LM_SENTENCES)
    by_split = {split: [u for u in extra if u.speaker.split == split] for split in msc.EXTRA_SPLITS}
    train = [u for u in labelled if u.speaker.split == "train"]
    assert len(by_split["pool"]) >= 6 * len(train)

    def variants(speakers):
        return {s.voice.split("+")[1] for s in speakers}

    splits = {split: [s for s in msc.SPEAKERS if s.split == split] for split in msc.SPLITS}
    pool, unseen = variants(msc.POOL_SPEAKERS), variants(msc.UNSEEN_SPEAKERS)
    assert len(pool) > len(variants(splits["train"])) and variants(splits["train"]) < pool
    for held_out in (splits["valid"], splits["test"]):
        assert not pool & variants(held_out) and not unseen & variants(held_out)
    assert not unseen & pool
    texts = [u.text for u in extra]
    assert len(set(texts)) == len(texts) and not set(texts) & {u.text for u in labelled}
    assert not {u.text for u in by_split["unseen"]} & set(lm_lines)
    ids = [u.id for u in extra] + [u.id for u in labelled]
    assert len(set(ids)) == len(ids)


@needs_espeak
def test_generator_writes_the_extra_splits_without_touching_a_corpus(tmp_path):
    counts = {"pool": 1, "unseen": 1}
    first = msc.generate_extra(tmp_path / "a", 1, counts, workers=2, overwrite=False)
    assert {u.speaker.split for u in first} == set(msc.EXTRA_SPLITS)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(msc.EXTRA_SPLITS)
    assert {u.id: u.text for u in first} == {u.id: u.text for u in msc.plan_extra(1, counts)}
    for utt in first:
        transcript = (tmp_path / "a" / utt.directory).glob("*.trans.txt")
        assert f"{utt.id} {utt.text}" in next(transcript).read_text().splitlines()
        assert sf.info(tmp_path / "a" / utt.path).frames == first[utt]
    msc.generate_extra(tmp_path / "b", 1, counts, workers=2, overwrite=False)
    for path in (tmp_path / "a").rglob("*.flac"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    with pytest.raises(SystemExit, match="--overwrite"):
        msc.generate_extra(tmp_path / "a", 1, counts, workers=1, overwrite=False)
