"""Greedy (viterbi) CTC decoding, word timestamps and error counting."""

import torch

from decoding_helpers import emissions_for, letter_dictionary
from fairseq_lite.data.data_utils import post_process
from fairseq_lite.decoding import ErrorCounter, ViterbiDecoder, build_decoder, word_error_rate, word_spans
from fairseq_lite.decoding.hypotheses import blank_index, collapse_path, silence_index


def test_greedy_reads_the_confused_letters():
    d = letter_dictionary()
    emissions, lengths = emissions_for(["THE CAT SEES THE DOG"], d)
    (hypo,) = ViterbiDecoder(d).decode(emissions, lengths)[0]
    assert post_process(d.string(hypo.tokens), "letter") == "THA CAT SAAS THA DOG"
    assert hypo["timesteps"] == hypo.timesteps and hypo.words is None


def test_batched_equals_per_utterance_with_padding():
    d = letter_dictionary()
    sentences = ["THE CAT SEES THE DOG", "A DOG", "SEES", "THE THE"]
    emissions, lengths = emissions_for(sentences, d, pad_to=50)
    # Padding frames strongly prefer a letter: they must be ignored through ``lengths``.
    for b, n in enumerate(lengths.tolist()):
        emissions[b, n:, d.index("Z")] = 10.0
    decoder = build_decoder("viterbi", d)
    batched = decoder.decode(emissions, lengths)
    for b, n in enumerate(lengths.tolist()):
        (single,) = decoder.decode(emissions[b : b + 1, :n])[0]
        assert torch.equal(batched[b][0].tokens, single.tokens)
        assert batched[b][0].timesteps == single.timesteps
        assert abs(batched[b][0].score - single.score) < 1e-4
        assert d.index("Z") not in single.tokens.tolist()


def test_collapse_keeps_repeats_separated_by_blank():
    d = letter_dictionary()
    e, s = d.index("E"), d.index("S")
    assert collapse_path([s, s, 0, e, 0, e, e, s], blank=0) == ([s, e, e, s], [0, 3, 5, 7])
    assert blank_index(d) == d.bos() and silence_index(d) == d.index("|")


def test_word_timestamps_follow_units_and_post_process():
    d = letter_dictionary()
    emissions, lengths = emissions_for(["THE CAT SEES"], d)
    (hypo,) = ViterbiDecoder(d).decode(emissions, lengths)[0]
    units = [d[i] for i in hypo.tokens.tolist()]
    spans = word_spans(units, hypo.timesteps, "letter", frame_seconds=0.02)
    assert [s.word for s in spans] == post_process(" ".join(units), "letter").split()
    # THA: T at frame 0, A at frame 4 → ends at frame 5; CAT starts after the "|" at frame 6.
    assert (spans[0].start_frame, spans[0].end_frame) == (0, 5)
    assert spans[1].start_frame == 7 and abs(spans[1].start - 0.14) < 1e-9
    pieces = word_spans(["\u2581HE", "LLO", "\u2581WOR", "LD"], [0, 3, 6, 9], "sentencepiece", 0.02)
    assert [(p.word, p.start_frame, p.end_frame) for p in pieces] == [("HELLO", 0, 4), ("WORLD", 6, 10)]
    bpe = word_spans(["HE@@", "LLO", "WORLD"], [0, 2, 5], "subword_nmt", 0.02)
    assert [(p.word, p.start_frame, p.end_frame) for p in bpe] == [("HELLO", 0, 3), ("WORLD", 5, 6)]


def test_error_counter_sums_like_fairseq():
    counter = ErrorCounter()
    counter.add("THE CAT SEES THE DOG", "THA CAT SAAS THA DOG", list("THE|CAT"), list("THA|CAT"))
    counter.add("A DOG", "A DOG")
    assert (counter.word_errors, counter.word_total) == (3, 7)
    assert abs(counter.wer - 100 * 3 / 7) < 1e-9
    assert (counter.unit_errors, counter.unit_total) == (1, 7)
    assert word_error_rate(["A B C D"], ["A X C"]) == 50.0
