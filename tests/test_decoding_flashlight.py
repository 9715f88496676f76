"""flashlight-text decoding: KenLM lexicon and lexicon-free decoders, lexicon checks, the Python LM wrapper."""

import builtins
import gc
import sys

import pytest
import torch

import fairseq_lite.decoding
from decoding_helpers import LEXICON_WORDS, WORD_ARPA, emissions_for, letter_dictionary, write_lexicon
from fairseq_lite.data.data_utils import post_process
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.decoding import ViterbiDecoder, build_decoder
from fairseq_lite.decoding.flashlight import DecoderConfig, FairseqLM, load_lexicon
from fairseq_lite.errors import ConfigError, DataError, FairseqLiteError

# A character bigram LM over fairseq's letter units: after T, H, S and E the letter E is likely.
CHAR_ARPA = """\\data\\
ngram 1=8
ngram 2=6

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t0
-1.0\t</s>\t0
-1.0\t|\t0
-1.0\tE\t0
-1.0\tA\t0
-1.0\tH\t0
-1.0\tS\t0

\\2-grams:
-0.1\tH E
-0.1\tS E
-0.2\tE E
-0.2\tE S
-0.2\tE |
-2.0\tH A

\\end\\
"""


@pytest.fixture
def lm_files(tmp_path):
    word_lm = tmp_path / "words.arpa"
    word_lm.write_text(WORD_ARPA)
    char_lm = tmp_path / "chars.arpa"
    char_lm.write_text(CHAR_ARPA)
    lexicon = tmp_path / "lexicon.lst"
    write_lexicon(lexicon, LEXICON_WORDS)
    return word_lm, char_lm, lexicon


def words_of(hypo, d):
    return " ".join(hypo.words) if hypo.words is not None else post_process(d.string(hypo.tokens), "letter")


def test_kenlm_lexicon_decoder_fixes_what_greedy_gets_wrong(lm_files):
    word_lm, _, lexicon = lm_files
    d = letter_dictionary()
    emissions, lengths = emissions_for(["THE CAT SEES THE DOG"], d)
    greedy = ViterbiDecoder(d).decode(emissions, lengths)[0][0]
    assert words_of(greedy, d) == "THA CAT SAAS THA DOG"

    cfg = DecoderConfig(beam=50, lm_weight=2.0, word_score=-1.0, lexicon=str(lexicon), kenlm_model=str(word_lm),
                        nbest=3)
    hypos = build_decoder("kenlm", d, cfg).decode(emissions, lengths)[0]
    best = hypos[0]
    assert best.words == ["THE", "CAT", "SEES", "THE", "DOG"]
    assert words_of(best, d) == post_process(d.string(best.tokens), "letter")
    assert len(best.timesteps) == len(best.tokens) and best.timesteps == sorted(best.timesteps)
    assert 1 < len(hypos) <= 3 and hypos[0].score >= hypos[1].score

    # Without the LM the lexicon alone fixes THA but cannot tell SEES from SEAS: the acoustics win.
    no_lm = build_decoder("kenlm", d, DecoderConfig(beam=50, lm_weight=0.0, word_score=-1.0, lexicon=str(lexicon),
                                                    kenlm_model=str(word_lm)))
    assert no_lm.decode(emissions, lengths)[0][0].words == ["THE", "CAT", "SEAS", "THE", "DOG"]


def test_unit_lm_changes_lexicon_free_output(lm_files):
    _, char_lm, _ = lm_files
    d = letter_dictionary()
    emissions, lengths = emissions_for(["THE CAT SEES", "SEES THE"], d)

    def decode(lm_weight):
        cfg = DecoderConfig(beam=50, lm_weight=lm_weight, kenlm_model=str(char_lm), unit_lm=True)
        decoder = build_decoder("kenlm", d, cfg)
        # The LM's token table keeps the dictionary order (fairseq's create_word_dict scrambles it).
        assert [decoder.unit_table.get_entry(i) for i in range(len(d))] == d.symbols
        return [words_of(h[0], d) for h in decoder.decode(emissions, lengths, num_workers=2)]

    assert decode(0.0) == ["THA CAT SAAS", "SAAS THA"]
    assert decode(2.0) == ["THE CAT SEES", "SEES THE"]


def test_threads_and_batches_give_the_same_hypotheses(lm_files):
    word_lm, _, lexicon = lm_files
    d = letter_dictionary()
    sentences = ["THE CAT SEES THE DOG", "A DOG", "THE CAT", "SEES A DOG", "THE DOG"]
    emissions, lengths = emissions_for(sentences, d, pad_to=60)
    decoder = build_decoder("kenlm", d, DecoderConfig(beam=20, lm_weight=2.0, word_score=-1.0,
                                                      lexicon=str(lexicon), kenlm_model=str(word_lm)))
    serial = decoder.decode(emissions, lengths)
    threaded = decoder.decode(emissions, lengths, num_workers=3, progress=True)
    single = [decoder.decode(emissions[b : b + 1, :n])[0] for b, n in enumerate(lengths.tolist())]
    for a, b, c in zip(serial, threaded, single):
        assert a[0].words == b[0].words == c[0].words
        assert torch.equal(a[0].tokens, c[0].tokens) and a[0].timesteps == c[0].timesteps
    assert [" ".join(h[0].words) for h in serial] == sentences


def test_lexicon_problems_name_the_word(tmp_path, lm_files):
    d = letter_dictionary()
    bad_unit = tmp_path / "bad_unit.lst"
    bad_unit.write_text("THE\tT H E |\nCAFÉ\tC A F É |\n")
    with pytest.raises(DataError, match=r"bad_unit.lst:2: word 'CAFÉ' .*'É'"):
        load_lexicon(str(bad_unit), d)
    no_spelling = tmp_path / "no_spelling.lst"
    no_spelling.write_text("THE\tT H E |\n\nDOG\n")
    with pytest.raises(DataError, match=r"no_spelling.lst:3: word 'DOG' has no spelling"):
        load_lexicon(str(no_spelling), d)
    spaced = tmp_path / "spaced.lst"
    spaced.write_text("THE T H E |\nTHE T H A |\n\nDOG\tD O G |\n")
    assert load_lexicon(str(spaced), d) == {
        "THE": [[d.index(c) for c in "THE|"], [d.index(c) for c in "THA|"]],
        "DOG": [[d.index(c) for c in "DOG|"]],
    }
    word_lm = lm_files[0]
    with pytest.raises(DataError, match="does not exist"):
        build_decoder("kenlm", d, DecoderConfig(lexicon=str(tmp_path / "missing.lst"), kenlm_model=str(word_lm)))
    with pytest.raises(ConfigError, match="--unit-lm"):
        build_decoder("kenlm", d, DecoderConfig(kenlm_model=str(word_lm)))
    with pytest.raises(DataError, match="KenLM model .* does not exist"):
        build_decoder("kenlm", d, DecoderConfig(lexicon=str(lm_files[2]), kenlm_model=str(tmp_path / "no.arpa")))
    with pytest.raises(ConfigError, match="unknown --w2l-decoder"):
        build_decoder("wfstlm", d)


def test_missing_flashlight_gives_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_flashlight(name, *args, **kwargs):
        if name.startswith("flashlight"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flashlight)
    monkeypatch.delitem(sys.modules, "fairseq_lite.decoding.flashlight")
    monkeypatch.delattr(fairseq_lite.decoding, "flashlight")
    with pytest.raises(FairseqLiteError, match=r"pip install fairseq_lite\[decode\]"):
        build_decoder("kenlm", letter_dictionary())
    # viterbi never needs flashlight
    assert build_decoder("viterbi", letter_dictionary()).decode(torch.zeros(1, 3, 5))[0][0].tokens.numel() == 0


class BigramLM(torch.nn.Module):
    """A real torch LM with fairseq's decoder interface: (1, L) ids → logits, then get_normalized_probs."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Embedding.from_pretrained(table)

    def forward(self, tokens):
        return (self.logits(tokens), None)

    def get_normalized_probs(self, net_output, log_probs):
        return net_output[0].log_softmax(-1) if log_probs else net_output[0].softmax(-1)


def word_bigram_lm(lm_dict, pairs):
    table = torch.zeros(len(lm_dict), len(lm_dict))
    for prev, nxt in pairs:
        table[lm_dict.index(prev), lm_dict.index(nxt)] = 6.0
    return BigramLM(table)


def test_fairseqlm_decoder_with_a_torch_lm(lm_files):
    _, _, lexicon = lm_files
    d = letter_dictionary()
    lm_dict = Dictionary()
    for word in LEXICON_WORDS:
        lm_dict.add_symbol(word)
    model = word_bigram_lm(lm_dict, [("</s>", "THE"), ("THE", "CAT"), ("CAT", "SEES"), ("SEES", "THE"),
                                     ("THE", "DOG"), ("DOG", "</s>")])
    emissions, lengths = emissions_for(["THE CAT SEES THE DOG"], d)

    def decode(lm_weight):
        cfg = DecoderConfig(beam=50, lm_weight=lm_weight, word_score=0.0, lexicon=str(lexicon))
        decoder = build_decoder("fairseqlm", d, cfg, lm_model=model, lm_dict=lm_dict)
        gc.collect()  # the decoder keeps its Python LM alive itself (flashlight pitfall 2)
        return decoder.decode(emissions, lengths, num_workers=2)[0][0].words

    assert decode(0.0) == ["THE", "CAT", "SEAS", "THE", "DOG"]
    assert decode(1.0) == ["THE", "CAT", "SEES", "THE", "DOG"]
    with pytest.raises(ConfigError, match="--lm-model"):
        build_decoder("fairseqlm", d, DecoderConfig(lexicon=str(lexicon)))


def test_fairseq_lm_wrapper_scores_and_caches():
    lm_dict = Dictionary()
    for word in ["A", "B"]:
        lm_dict.add_symbol(word)
    model = word_bigram_lm(lm_dict, [("</s>", "A"), ("A", "B")])
    lm = FairseqLM(model, lm_dict, ["A", "B", "C"], max_cache=2)
    start = lm.start(False)
    state_a, score_a = lm.score(start, 0)
    expected = model(torch.tensor([[lm_dict.eos()]]))[0].log_softmax(-1)[0, -1, lm_dict.index("A")]
    assert abs(score_a - float(expected)) < 1e-5
    state_ab, score_ab = lm.score(state_a, 1)
    assert score_ab > score_a - 1.0 and lm.prefixes[state_ab] == (lm_dict.eos(), lm_dict.index("A"), lm_dict.index("B"))
    _, score_unk = lm.score(state_a, 2)  # "C" is not in the LM: scored as its <unk>
    assert score_unk < score_ab
    lm.finish(state_ab)
    assert len(lm.log_probs) == 2
