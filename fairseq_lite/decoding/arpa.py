"""A pure-Python n-gram LM estimator that writes ARPA files (the fallback when KenLM's lmplz is missing).

Interpolated Kneser-Ney: the highest order uses raw counts, lower orders use continuation counts
(the number of distinct words seen before an n-gram; raw counts for n-grams that start with
``<s>``), each order is discounted by D = n1 / (n1 + 2·n2) (0.5 when the corpus is too small for that
estimate), and unigrams are interpolated with a uniform distribution so that ``<unk>`` gets mass.
The ARPA file stores every seen n-gram's interpolated probability and each context's interpolation
weight as its backoff, so KenLM and flashlight read back exactly this model. lmplz's modified KN
has three discounts per order; this is the simpler one, fine for the small LMs it is meant for.

    python -m fairseq_lite.decoding.arpa --order 4 --text corpus.txt --arpa lm.arpa
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Sequence, TextIO, Tuple

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
MAX_ORDER = 6  # KenLM's and flashlight's default build
Gram = Tuple[str, ...]


def _discount(counts: Dict[Gram, int]) -> float:
    histogram = Counter(c for c in counts.values() if c <= 2)
    n1, n2 = histogram[1], histogram[2]
    d = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    return d if 0.0 < d < 1.0 else 0.5


def estimate(sentences: Iterable[Sequence[str]], order: int) -> Tuple[List[Dict[Gram, float]], List[Dict[Gram, float]]]:
    """(log10 probabilities, log10 backoffs) per order (index 0 = unigrams) for whitespace-split sentences."""
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be between 1 and {MAX_ORDER} (KenLM's limit), got {order}")
    raw: List[Counter] = [Counter() for _ in range(order)]
    for words in sentences:
        tokens = [BOS, *words, EOS]
        for k in range(1, order + 1):
            for i in range(len(tokens) - k + 1):
                raw[k - 1][tuple(tokens[i : i + k])] += 1
    if not raw[0]:
        raise ValueError("the text has no sentences")

    # Counts each order is estimated from: raw at the top, continuation counts below.
    adjusted: List[Dict[Gram, int]] = [dict(raw[-1])]
    for k in range(order - 1, 0, -1):
        left_contexts = Counter(gram[1:] for gram in raw[k])
        adjusted.insert(0, {g: (c if g[0] == BOS else left_contexts[g]) for g, c in raw[k - 1].items()})

    probs: List[Dict[Gram, float]] = [dict() for _ in range(order)]
    gammas: List[Dict[Gram, float]] = [dict() for _ in range(order)]

    unigrams = {g: c for g, c in adjusted[0].items() if g != (BOS,)}
    d = _discount(unigrams)
    total = sum(unigrams.values())
    vocab = set(unigrams) | {(UNK,)}
    uniform = d * len(unigrams) / total / len(vocab)
    for gram in vocab:
        probs[0][gram] = max(unigrams.get(gram, 0) - d, 0) / total + uniform

    for k in range(1, order):
        counts = adjusted[k]
        d = _discount(counts)
        context_total: Dict[Gram, int] = defaultdict(int)
        context_types: Dict[Gram, int] = defaultdict(int)
        for gram, c in counts.items():
            context_total[gram[:-1]] += c
            context_types[gram[:-1]] += 1
        for context, s in context_total.items():
            gammas[k - 1][context] = d * context_types[context] / s
        for gram, c in counts.items():
            context = gram[:-1]
            probs[k][gram] = (c - d) / context_total[context] + gammas[k - 1][context] * probs[k - 1][gram[1:]]

    log_probs = [{g: math.log10(p) for g, p in level.items()} for level in probs]
    log_probs[0][(BOS,)] = -99.0
    backoffs = [{g: math.log10(w) for g, w in level.items()} for level in gammas]
    return log_probs, backoffs


def write_arpa(log_probs: List[Dict[Gram, float]], backoffs: List[Dict[Gram, float]], out: TextIO) -> None:
    """Write an ARPA file (tab-separated, as KenLM writes it)."""
    out.write("\\data\\\n")
    for k, level in enumerate(log_probs, start=1):
        out.write(f"ngram {k}={len(level)}\n")
    for k, level in enumerate(log_probs, start=1):
        out.write(f"\n\\{k}-grams:\n")
        for gram in sorted(level):
            line = f"{level[gram]:.6f}\t{' '.join(gram)}"
            if k < len(log_probs):
                line += f"\t{backoffs[k - 1].get(gram, 0.0):.6f}"
            out.write(line + "\n")
    out.write("\n\\end\\\n")


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description="Estimate an interpolated Kneser-Ney ARPA LM from a text file")
    parser.add_argument("--text", required=True, help="training text, one sentence per line")
    parser.add_argument("--order", type=int, required=True, help=f"n-gram order (1-{MAX_ORDER})")
    parser.add_argument("--arpa", required=True, help="output ARPA file")
    args = parser.parse_args(argv)
    with open(args.text, encoding="utf-8") as f:
        sentences = [line.split() for line in f if line.strip()]
    log_probs, backoffs = estimate(sentences, args.order)
    with open(args.arpa, "w", encoding="utf-8") as out:
        write_arpa(log_probs, backoffs, out)


if __name__ == "__main__":
    main()
