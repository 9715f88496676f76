"""LM and lexicon tooling: the pure-Python ARPA estimator, scripts/build_kenlm.sh, scripts/make_lexicon.py."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import kenlm
import pytest

from decoding_helpers import SENTENCE, emissions_for, letter_dictionary
from fairseq_lite.data.data_utils import post_process
from fairseq_lite.decoding import build_decoder
from fairseq_lite.decoding.arpa import estimate, write_arpa
from fairseq_lite.decoding.flashlight import DecoderConfig

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ["THE CAT SEES THE DOG", "THE DOG SEES A CAT", "A CAT SEES THE CAT", "THE DOG SEES THE CAT",
          "SEAS ARE BLUE"]


def test_estimated_arpa_is_normalised_and_loads_in_kenlm(tmp_path):
    log_probs, backoffs = estimate([s.split() for s in CORPUS], order=3)
    arpa = tmp_path / "lm.arpa"
    with open(arpa, "w") as f:
        write_arpa(log_probs, backoffs, f)
    model = kenlm.Model(str(arpa))
    assert model.order == 3
    vocab = [w for (w,) in log_probs[0] if w != "<s>"]
    assert "<unk>" in vocab and "</s>" in vocab
    for context in (["<s>"], ["<s>", "THE"], ["THE", "CAT"], ["BLUE"], ["CAT", "DOG"]):
        state = kenlm.State()
        model.NullContextWrite(state)
        for word in context:
            nxt = kenlm.State()
            model.BaseScore(state, word, nxt) if word != "<s>" else model.BeginSentenceWrite(nxt)
            state = nxt
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocab)
        assert abs(total - 1.0) < 1e-4, (context, total)
    assert model.score("THE CAT SEES THE DOG") > model.score("THE CAT SEAS THE DOG")
    with pytest.raises(ValueError, match="between 1 and 6"):
        estimate([["A"]], order=7)


def run_script(*args, env=None):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def test_build_kenlm_and_make_lexicon_feed_the_decoder(tmp_path, capsys):
    d = letter_dictionary()
    dict_file = tmp_path / "dict.ltr.txt"
    d.save(str(dict_file))
    words = tmp_path / "corpus.txt"
    words.write_text("\n".join(CORPUS + ["café zebra"]) + "\n")
    lexicon = tmp_path / "lexicon.lst"
    make_lexicon = runpy.run_path(str(ROOT / "scripts" / "make_lexicon.py"))["main"]
    assert make_lexicon(["--words", str(words), "--dict", str(dict_file), "--output", str(lexicon), "--uppercase"]) == 0
    stderr = capsys.readouterr().err
    assert "left out 1 words" in stderr and "CAFÉ" in stderr
    lines = lexicon.read_text().splitlines()
    assert lines[0] == "THE\tT H E |" and "ZEBRA\tZ E B R A |" in lines and len(lines) == 9

    env = dict(os.environ, PYTHON=sys.executable, KENLM_NO_BUILD="1", KENLM_BIN=str(tmp_path))
    lm = tmp_path / "lm.arpa"
    built = run_script("bash", "scripts/build_kenlm.sh", str(words), "3", str(lm), env=env)
    assert built.returncode == 0, built.stderr
    assert lm.read_text().startswith("\\data\\")
    if "falling back" in built.stderr:
        assert "apt-get install" in built.stderr and "libboost-program-options-dev" in built.stderr

    emissions, lengths = emissions_for([SENTENCE], d)
    cfg = DecoderConfig(beam=50, lm_weight=2.0, word_score=-1.0, lexicon=str(lexicon), kenlm_model=str(lm))
    assert build_decoder("kenlm", d, cfg).decode(emissions, lengths)[0][0].words == SENTENCE.split()

    bad = run_script("bash", "scripts/build_kenlm.sh", str(words), "9", str(lm), env=env)
    assert bad.returncode == 2 and "at most 6" not in bad.stdout and "ORDER must be 1-6" in bad.stderr


def test_character_lm_from_the_estimator_changes_lexicon_free_output(tmp_path):
    d = letter_dictionary()
    char_sentences = [" ".join("|".join(s.split()) + "|") for s in CORPUS]
    log_probs, backoffs = estimate([s.split() for s in char_sentences], order=4)
    lm = tmp_path / "chars.arpa"
    with open(lm, "w") as f:
        write_arpa(log_probs, backoffs, f)
    emissions, lengths = emissions_for([SENTENCE], d)

    def decode(lm_weight):
        decoder = build_decoder("kenlm", d, DecoderConfig(beam=50, lm_weight=lm_weight, kenlm_model=str(lm),
                                                          unit_lm=True))
        return post_process(d.string(decoder.decode(emissions, lengths)[0][0].tokens), "letter")

    assert decode(0.0) == "THA CAT SAAS THA DOG"
    assert decode(1.0) == SENTENCE
