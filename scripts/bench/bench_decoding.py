#!/usr/bin/env python
"""KenLM beam-search decoding: our flashlight lexicon decoder against pyctcdecode, same emissions and LM.

    python scripts/bench/bench_decoding.py --utterances 200 --beam 50

A synthetic language (pseudo-words from a word-level Markov chain) gives an LM training text and
held-out test sentences; the word 4-gram comes from scripts/build_kenlm.sh's Python estimator, so
both decoders read the same ARPA file. Emissions are CTC log-probabilities of the test sentences
with noisy logits and letters confused at random, so that greedy decoding makes errors that the LM
can fix. LM weight and word score mean the same in both (pyctcdecode's alpha is scaled from natural
log to KenLM's log10). One run each, single-threaded: utterances per second and WER (greedy for reference), and
the speed ratio (ours / pyctcdecode, > 1 means we are faster).
"""

import argparse
import json
import logging
import math
import os
import random
import tempfile
import time

import torch

from fairseq_lite.data.data_utils import post_process
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.decoding import ViterbiDecoder, build_decoder, word_error_rate
from fairseq_lite.decoding.arpa import estimate, write_arpa
from fairseq_lite.decoding.flashlight import DecoderConfig

LETTERS = "ETAOINSHRDLCUMWFGYPBVK"


def make_language(rng: random.Random, vocab: int):
    words = sorted({"".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 7))) for _ in range(vocab)})
    successors = {w: rng.sample(words, 8) for w in words}

    def sentence():
        word, out = rng.choice(words), []
        for _ in range(rng.randint(5, 12)):
            out.append(word)
            word = rng.choice(successors[word]) if rng.random() < 0.9 else rng.choice(words)
        return " ".join(out)

    return words, sentence


def emissions_for(sentence: str, d: Dictionary, rng: random.Random, confusion: float, noise: float):
    path = []
    for word in sentence.split():
        for letter in word:
            path += [letter] * rng.randint(1, 3) + [None] * rng.randint(0, 2)
        path.append("|")
    logits = torch.randn(len(path), len(d)) * noise
    for t, symbol in enumerate(path):
        index = d.bos() if symbol is None else d.index(symbol)
        logits[t, index] += 5.0
        if symbol not in (None, "|") and rng.random() < confusion:
            logits[t, d.index(rng.choice(LETTERS))] += 5.5
    return logits.log_softmax(-1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--train-sentences", type=int, default=20000)
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--word-score", type=float, default=0.0)
    parser.add_argument("--confusion", type=float, default=0.15)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def run(args) -> dict:
    """Both decoders on the same emissions and LM; speeds, WERs and their ratio."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    d = Dictionary()
    for symbol in "|" + LETTERS:
        d.add_symbol(symbol)
    words, sentence = make_language(rng, args.vocab)
    train = [sentence() for _ in range(args.train_sentences)]
    test = [sentence() for _ in range(args.utterances)]
    emissions = [emissions_for(s, d, rng, args.confusion, args.noise) for s in test]

    work = tempfile.mkdtemp(prefix="bench_decoding_")
    lm_path, lexicon_path = os.path.join(work, "lm.arpa"), os.path.join(work, "lexicon.lst")
    with open(lm_path, "w") as f:
        write_arpa(*estimate([s.split() for s in train], order=4), f)
    with open(lexicon_path, "w") as f:
        f.writelines(f"{w}\t{' '.join(w)} |\n" for w in words)

    results = {}
    greedy = ViterbiDecoder(d)
    hyps = [post_process(d.string(greedy.decode(e[None])[0][0].tokens), "letter") for e in emissions]
    results["greedy"] = {"wer": word_error_rate(test, hyps)}

    cfg = DecoderConfig(beam=args.beam, beam_size_token=len(d), beam_threshold=25.0, lm_weight=args.lm_weight,
                        word_score=args.word_score, lexicon=lexicon_path, kenlm_model=lm_path)
    ours = build_decoder("kenlm", d, cfg)
    start = time.perf_counter()
    hyps = [" ".join(ours.decode(e[None])[0][0].words) for e in emissions]
    elapsed = time.perf_counter() - start
    results["fairseq_lite"] = {"utt_per_s": len(test) / elapsed, "wer": word_error_rate(test, hyps)}

    from pyctcdecode import build_ctcdecoder

    labels = ["", "<pad>", "</s>", "<unk>", " ", *LETTERS]
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)  # it warns about the multi-letter specials
    # pyctcdecode turns KenLM's log10 scores into natural logs before weighting; flashlight does not.
    alpha = args.lm_weight * math.log10(math.e)
    theirs = build_ctcdecoder(labels, kenlm_model_path=lm_path, unigrams=words, alpha=alpha, beta=args.word_score)
    arrays = [e.numpy() for e in emissions]
    start = time.perf_counter()
    hyps = [" ".join(theirs.decode(a, beam_width=args.beam).split()) for a in arrays]
    elapsed = time.perf_counter() - start
    results["pyctcdecode"] = {"utt_per_s": len(test) / elapsed, "wer": word_error_rate(test, hyps)}
    results["speed_ratio_ours_over_pyctcdecode"] = (
        results["fairseq_lite"]["utt_per_s"] / results["pyctcdecode"]["utt_per_s"]
    )
    results["setup"] = {k: v for k, v in vars(args).items()}
    results["setup"]["frames_per_utterance"] = sum(e.size(0) for e in emissions) / len(emissions)
    torch.set_num_threads(threads)
    return results


def main():
    print(json.dumps(run(parse_args()), indent=2))


if __name__ == "__main__":
    main()
