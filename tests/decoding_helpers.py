"""Shared material for the decoding tests: a letter dictionary, CTC emissions, a hand-written word LM.

The emissions spell a sentence frame by frame, but every frame that should be ``E`` prefers ``A``
a little, so greedy decoding reads "THE CAT SEES" as "THA CAT SAAS".
"""

from __future__ import annotations

import torch

from fairseq_lite.data.dictionary import Dictionary

LETTERS = "|ETAOHNISRDLUMWCFGYPBVKXJQZ'"
SENTENCE = "THE CAT SEES THE DOG"

# A 3-gram word LM (log10 probabilities, backoff weights) where "CAT SEES" is likely and SEAS is not.
WORD_ARPA = """\\data\\
ngram 1=9
ngram 2=8
ngram 3=2

\\1-grams:
-1.2\t<unk>\t0
-99\t<s>\t-0.5
-1.0\t</s>\t0
-0.7\tTHE\t-0.3
-1.1\tA\t-0.3
-1.0\tCAT\t-0.3
-1.0\tDOG\t-0.3
-1.0\tSEES\t-0.3
-3.0\tSEAS\t-0.3

\\2-grams:
-0.2\t<s> THE\t-0.1
-0.3\tTHE CAT\t-0.1
-0.3\tTHE DOG\t-0.1
-0.2\tCAT SEES\t-0.1
-0.2\tSEES THE\t-0.1
-0.2\tDOG </s>\t0
-0.9\tSEES A\t-0.1
-0.5\tA DOG\t-0.1

\\3-grams:
-0.1\tCAT SEES THE
-0.1\tSEES THE DOG

\\end\\
"""

LEXICON_WORDS = ["THE", "A", "CAT", "DOG", "SEES", "SEAS"]


def letter_dictionary() -> Dictionary:
    """A fairseq letter dictionary: the four specials, then ``|`` and the letters."""
    d = Dictionary()
    for symbol in LETTERS:
        d.add_symbol(symbol)
    return d


def letter_frames(sentence: str) -> list:
    """The frame-level path of ``sentence``: each letter then a blank, ``|`` after each word."""
    path = []
    for word in sentence.split():
        for letter in word:
            path += [letter, None]
        path.append("|")
    return path


def emissions_for(sentences, tgt_dict: Dictionary, confusion: float = 0.6, pad_to: int = 0) -> tuple:
    """(B, T, V) log-softmax emissions and lengths; ``E`` frames score ``A`` ``confusion`` higher."""
    paths = [letter_frames(s) for s in sentences]
    frames = max(max(len(p) for p in paths), pad_to)
    logits = torch.zeros(len(paths), frames, len(tgt_dict))
    blank = tgt_dict.bos()
    for b, path in enumerate(paths):
        for t in range(frames):
            symbol = path[t] if t < len(path) else None
            index = blank if symbol is None else tgt_dict.index(symbol)
            logits[b, t, index] = 4.0
            if symbol == "E":
                logits[b, t, tgt_dict.index("A")] = 4.0 + confusion
    lengths = torch.tensor([len(p) for p in paths])
    return logits.log_softmax(dim=-1), lengths


def write_lexicon(path, words) -> None:
    """A flashlight letter lexicon: ``WORD<TAB>W O R D |`` per word."""
    with open(path, "w", encoding="utf-8") as f:
        for word in words:
            f.write(f"{word}\t{' '.join(word)} |\n")
