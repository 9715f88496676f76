#!/usr/bin/env python3
"""Synthesise the demo speech corpus with espeak-ng (issue 9).

Writes a LibriSpeech-shaped corpus that the wav2vec tools read as they read LibriSpeech:

    OUT/{train,valid,test}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac   16 kHz, 16-bit FLAC
    OUT/{train,valid,test}/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt    "<utt-id> UPPER CASE WORDS"
    OUT/dict.ltr.txt      fairseq letter dictionary of the train labels ("SYMBOL COUNT", most frequent first)
    OUT/lm_text.txt       LM training text: one upper-case sentence per line, same grammar, no valid/test sentence
    OUT/SPEAKERS.TXT      LibriSpeech-style speaker table (id, sex, subset, minutes, espeak-ng voice)

With --extra it writes instead the two splits `make demo` synthesises at run time (not committed):

    OUT/pool/...          the unlabelled pretraining pool: about 6x the labelled train audio, the train voices at
                          new pitches plus voices of their own, wider speaking rates, sentences of no labelled split
    OUT/unseen/...        a second test set: voices (espeak-ng variants) of no other split, new sentences

Sentences come from a small grammar over a letters-only vocabulary; every speaker is one espeak-ng voice
(accent + variant + base pitch), and the voice variants of valid and test never occur in train.
The same seed gives byte-identical files on the same espeak-ng version: every random choice is drawn in
the main process before synthesis, and each file depends only on its own (text, voice, speed, pitch, level).

    python scripts/make_speech_corpus.py demo/corpus --overwrite      # regenerates the committed corpus
    python scripts/make_speech_corpus.py demo_out/extra --extra       # the demo's pool and unseen-voices split
"""

from __future__ import annotations

import argparse
import functools
import io
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fairseq_lite.data.labels import dictionary_from_labels, letters

SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test")
DEFAULT_SEED = 1
DEFAULT_LM_SENTENCES = 10000
DEFAULT_UTTS_PER_SPEAKER = {"train": 13, "valid": 10, "test": 14}  # sized to keep the corpus under ~15 MB
EXTRA_SPLITS = ("pool", "unseen")
#: per pool / unseen speaker; 36 pool speakers x 40 utterances are about 60 minutes, 6x the labelled train audio
DEFAULT_EXTRA_UTTS = {"pool": 40, "unseen": 14}
POOL_SPEED_RANGE = (120, 200)
SPEED_RANGE = (140, 180)  # espeak-ng words per minute, drawn per utterance
PITCH_JITTER = 6  # per-utterance pitch = speaker pitch +- this
LEVEL_RANGE_DB = (-30.0, -24.0)  # RMS level in dBFS, drawn per utterance
TRIM_THRESHOLD_DB = -45.0  # 10 ms frames this far below the loudest frame count as silence
TRIM_MARGIN_S = 0.1  # silence kept before the first and after the last voiced frame
PEAK_LIMIT = 0.95

# ---------------------------------------------------------------------------------------------------------
# Grammar: word classes and sentence templates. Every letter A-Z occurs; no digits, no apostrophes, and no
# two words are homophones, so the letters of a word follow from its sound once the word is learnt.
# ---------------------------------------------------------------------------------------------------------
NAMES = ["ANNA", "JACK", "MAX", "ZOE", "OLIVER", "LUCY", "VICTOR", "EMMA"]
DETERMINERS = ["THE", "A", "MY", "YOUR", "HER", "HIS", "OUR", "THIS"]
PLACE_DETERMINERS = ["THE", "MY", "OUR", "THIS"]
AGENT_ADJECTIVES = ["BIG", "SMALL", "OLD", "YOUNG", "QUIET", "HAPPY", "LAZY", "QUICK", "JOLLY", "FUZZY"]
THING_ADJECTIVES = ["BIG", "SMALL", "OLD", "RED", "GREEN", "BLUE", "BROWN", "WHITE", "BLACK", "COLD", "WARM"]
MOODS = ["HAPPY", "TIRED", "HUNGRY", "SLEEPY", "ANGRY", "QUIET", "BUSY", "LAZY"]
AGENTS = ["DOG", "CAT", "FOX", "BIRD", "HORSE", "ZEBRA", "MONKEY", "FARMER", "TEACHER", "DOCTOR",
          "SAILOR", "BAKER", "GIRL", "BOY", "KING", "QUEEN"]
THINGS = ["BALL", "BOX", "BOOK", "APPLE", "CAKE", "KEY", "LETTER", "JACKET", "BASKET", "WAGON",
          "VIOLIN", "LAMP", "CUP", "HAT"]
PLACES = ["HOUSE", "GARDEN", "RIVER", "MARKET", "SCHOOL", "KITCHEN", "FOREST", "VILLAGE", "CASTLE",
          "HARBOR", "STATION", "MEADOW"]
TRANSITIVE = ["FINDS", "CARRIES", "WANTS", "LIKES", "BRINGS", "HOLDS", "PAINTS", "FIXES", "WASHES",
              "OPENS", "BUYS", "SELLS"]
MOTION = ["WALKS", "RUNS", "JUMPS", "DRIVES", "SWIMS", "HURRIES", "TRAVELS"]
TOWARD = ["TO", "INTO", "TOWARD", "ACROSS"]
LOCATIVE = ["IN", "NEAR", "BEHIND", "BESIDE", "UNDER"]
TIMES = [["TODAY"], ["TONIGHT"], ["EVERY", "MORNING"], ["EVERY", "EVENING"], ["AGAIN"]]
MANNERS = ["SLOWLY", "QUICKLY", "QUIETLY", "GLADLY"]
CONJUNCTIONS = ["AND", "BUT", "THEN"]
FIXED_WORDS = ["AN", "IS", "VERY", "WHILE"]


def _agent(rng: random.Random) -> list[str]:
    if rng.random() < 0.25:
        return [rng.choice(NAMES)]
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(AGENT_ADJECTIVES))
    return words + [rng.choice(AGENTS)]


def _thing(rng: random.Random) -> list[str]:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(THING_ADJECTIVES))
    return words + [rng.choice(THINGS)]


def _place(rng: random.Random) -> list[str]:
    words = [rng.choice(PLACE_DETERMINERS)]
    if rng.random() < 0.3:
        words.append(rng.choice(THING_ADJECTIVES))
    return words + [rng.choice(PLACES)]


def _maybe(rng: random.Random, p: float, words: list[str]) -> list[str]:
    return words if rng.random() < p else []


def _clause(rng: random.Random) -> list[str]:
    """One simple clause: motion, transitive action, or state."""
    kind = rng.random()
    if kind < 0.4:  # THE LAZY DOG WALKS SLOWLY TO THE RIVER
        return (_agent(rng) + [rng.choice(MOTION)] + _maybe(rng, 0.3, [rng.choice(MANNERS)])
                + [rng.choice(TOWARD)] + _place(rng))
    if kind < 0.8:  # ANNA FINDS A RED BOX IN THE KITCHEN
        return (_agent(rng) + [rng.choice(TRANSITIVE)] + _thing(rng)
                + _maybe(rng, 0.4, [rng.choice(LOCATIVE)] + _place(rng)))
    # THE QUEEN IS VERY HAPPY
    return _agent(rng) + ["IS"] + _maybe(rng, 0.4, ["VERY"]) + [rng.choice(MOODS)]


def make_sentence(rng: random.Random) -> str:
    """One sentence of the demo grammar, upper case, words separated by single spaces."""
    words = _clause(rng)
    kind = rng.random()
    if kind < 0.15:
        words += [rng.choice(CONJUNCTIONS)] + _clause(rng)
    elif kind < 0.22:
        words += ["WHILE"] + _clause(rng)
    elif kind < 0.45:
        time = rng.choice(TIMES)
        in_front = rng.random() < 0.5 and time != ["AGAIN"]
        words = time + words if in_front else words + time
    return " ".join(_articles(words))


def _articles(words: list[str]) -> list[str]:
    """Turn the article A into AN before a vowel letter: A OLD BOX -> AN OLD BOX."""
    vowel_next = [after.startswith(tuple("AEIOU")) for after in words[1:] + [""]]
    return ["AN" if word == "A" and vowel else word for word, vowel in zip(words, vowel_next)]


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted."""
    words = set(NAMES + DETERMINERS + PLACE_DETERMINERS + AGENT_ADJECTIVES + THING_ADJECTIVES + MOODS + AGENTS
                + THINGS + PLACES + TRANSITIVE + MOTION + TOWARD + LOCATIVE + MANNERS + CONJUNCTIONS + FIXED_WORDS)
    words.update(w for time in TIMES for w in time)
    return sorted(words)


# ---------------------------------------------------------------------------------------------------------
# Speakers: one espeak-ng voice each. Variants (m*, f*, klatt*) are disjoint between the splits; accents
# (pronunciation dictionaries) of valid/test also occur in train.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speaker:
    id: int
    split: str
    voice: str  # espeak-ng "-v" argument: accent+variant
    pitch: int  # espeak-ng "-p" base value (0-99)

    @property
    def chapter(self) -> int:
        return self.id * 100 + 1

    @property
    def sex(self) -> str:
        return "F" if "+f" in self.voice else "M"


SPEAKERS = [
    Speaker(101, "train", "en-us+m1", 45), Speaker(102, "train", "en-us+f1", 55),
    Speaker(103, "train", "en-gb+m2", 40), Speaker(104, "train", "en-gb+f2", 60),
    Speaker(105, "train", "en-us+m3", 50), Speaker(106, "train", "en-us+f4", 50),
    Speaker(107, "train", "en-gb-x-rp+m4", 45), Speaker(108, "train", "en-029+f1", 45),
    Speaker(109, "train", "en-us+klatt", 50), Speaker(110, "train", "en-gb-scotland+m6", 40),
    Speaker(111, "train", "en-us-nyc+f2", 65), Speaker(112, "train", "en-us+m8", 55),
    Speaker(113, "train", "en-gb+klatt3", 45), Speaker(114, "train", "en-us+m2", 35),
    Speaker(115, "train", "en-gb+f4", 40), Speaker(116, "train", "en-029+m6", 60),
    Speaker(201, "valid", "en-us+m7", 45), Speaker(202, "valid", "en-gb+f3", 55),
    Speaker(203, "valid", "en-us+klatt2", 50),
    Speaker(301, "test", "en-us+m5", 50), Speaker(302, "test", "en-gb+f5", 50),
    Speaker(303, "test", "en-us+klatt4", 45),
]
#: the pool: every train voice again at another pitch (4xx), and 20 voices of its own (45x-46x); none of valid/test
POOL_SPEAKERS = [Speaker(300 + s.id, "pool", s.voice, (s.pitch + 23) % 40 + 30) for s in SPEAKERS if s.split == "train"]
POOL_SPEAKERS += [Speaker(451 + i, "pool", voice, 35 + 5 * (i % 6)) for i, voice in enumerate([
    "en-us+Andy", "en-gb+belinda", "en-us+robert", "en-gb+steph", "en-us-nyc+john", "en-029+paul",
    "en-us+Gene", "en-gb-x-rp+linda", "en-us+david", "en-gb-scotland+Mike", "en-us+edward", "en-gb+Lee",
    "en-us+max", "en-029+rob", "en-us+quincy", "en-gb+anika", "en-us+m6", "en-gb+f1", "en-us-nyc+klatt3",
    "en-gb-x-rp+m3"])]
#: the unseen-voices split: espeak-ng variants that no other split uses
UNSEEN_SPEAKERS = [Speaker(501, "unseen", "en-us+Annie", 50), Speaker(502, "unseen", "en-gb+Michael", 45),
                   Speaker(503, "unseen", "en-us+Alex", 50), Speaker(504, "unseen", "en-gb-x-rp+aunty", 55)]


@dataclass(frozen=True)
class Utterance:
    speaker: Speaker
    index: int
    text: str
    speed: int
    pitch: int
    level_db: float

    @property
    def id(self) -> str:
        return f"{self.speaker.id}-{self.speaker.chapter}-{self.index:04d}"

    @property
    def directory(self) -> Path:
        return Path(self.speaker.split) / str(self.speaker.id) / str(self.speaker.chapter)

    @property
    def path(self) -> Path:
        return self.directory / f"{self.id}.flac"


def plan_corpus(seed: int, utts_per_speaker: dict[str, int],
                lm_sentences: int) -> tuple[list[Utterance], list[str]]:
    """All random choices of the corpus: the utterances (text, speed, pitch, level) and the LM text.

    Audio sentences are unique across the whole corpus; LM sentences never repeat a valid/test sentence.
    """
    rng = random.Random(f"{seed}:audio")
    seen: set[str] = set()
    utterances = []
    for speaker in SPEAKERS:
        utterances += draw_utterances(rng, speaker, utts_per_speaker[speaker.split], seen, SPEED_RANGE)
    held_out = {u.text for u in utterances if u.speaker.split != "train"}
    lm_rng = random.Random(f"{seed}:lm")
    lm_lines = []
    while len(lm_lines) < lm_sentences:
        text = make_sentence(lm_rng)
        if text not in held_out:
            lm_lines.append(text)
    return utterances, lm_lines


def plan_extra(seed: int, utts_per_speaker: dict[str, int]) -> list[Utterance]:
    """The pool and unseen-voices utterances, drawn from their own random stream so that the labelled splits
    (plan_corpus at its defaults) stay as committed; no sentence repeats, nor one of a labelled split, and no
    unseen sentence is in lm_text.txt."""
    labelled, lm_lines = plan_corpus(seed, DEFAULT_UTTS_PER_SPEAKER, DEFAULT_LM_SENTENCES)
    seen = {u.text for u in labelled}
    rng = random.Random(f"{seed}:extra")
    utterances = []
    for speaker in POOL_SPEAKERS + UNSEEN_SPEAKERS:
        speeds = POOL_SPEED_RANGE if speaker.split == "pool" else SPEED_RANGE
        if speaker.split == "unseen":
            seen.update(lm_lines)
        utterances += draw_utterances(rng, speaker, utts_per_speaker[speaker.split], seen, speeds)
    return utterances


def draw_utterances(rng: random.Random, speaker: Speaker, count: int, seen: set[str],
                    speeds: tuple[int, int]) -> list[Utterance]:
    """count utterances of one speaker: a sentence not in seen (added to it), speed, pitch jitter and level."""
    utterances = []
    for index in range(count):
        text = make_sentence(rng)
        while text in seen:
            text = make_sentence(rng)
        seen.add(text)
        pitch = min(99, max(0, speaker.pitch + rng.randint(-PITCH_JITTER, PITCH_JITTER)))
        utterances.append(Utterance(speaker, index, text, rng.randint(*speeds), pitch,
                                    round(rng.uniform(*LEVEL_RANGE_DB), 1)))
    return utterances


# ---------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------
def trim_silence(audio: np.ndarray, rate: int) -> np.ndarray:
    """Leave TRIM_MARGIN_S of silence (to the 10 ms frame) before and after the speech: espeak-ng starts
    speaking at the first sample and trails about 0.4 s of silence."""
    margin = int(TRIM_MARGIN_S * rate)
    audio = np.pad(audio, (margin, margin))
    frame = rate // 100
    n = len(audio) // frame
    energy = (audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    voiced = np.flatnonzero(energy > energy.max() * 10 ** (TRIM_THRESHOLD_DB / 10))
    return audio[voiced[0] * frame - margin:(voiced[-1] + 1) * frame + margin]


def synthesise(utt: Utterance, root: Path) -> int:
    """Speak one utterance with espeak-ng, resample to 16 kHz, trim, set its level, write FLAC; returns samples."""
    cmd = ["espeak-ng", "-v", utt.speaker.voice, "-s", str(utt.speed), "-p", str(utt.pitch), "--stdout", utt.text]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"espeak-ng failed for {utt.id} ({' '.join(cmd[:-1])}): "
                           f"{result.stderr.decode(errors='replace').strip()}")
    # float64 throughout, so that rounding to 16 bits does not depend on which SIMD path a library takes
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float64")
    audio = trim_silence(soxr.resample(audio, rate, SAMPLE_RATE), SAMPLE_RATE)
    gain = 10 ** (utt.level_db / 20) / np.sqrt(np.mean(audio ** 2))
    gain = min(gain, PEAK_LIMIT / np.abs(audio).max())
    sf.write(root / utt.path, audio * gain, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return len(audio)


# ---------------------------------------------------------------------------------------------------------
# Text files
# ---------------------------------------------------------------------------------------------------------
def write_transcripts(root: Path, utterances) -> None:
    """One LibriSpeech <speaker>-<chapter>.trans.txt per chapter folder."""
    by_directory: dict[Path, list[Utterance]] = {}
    for utt in utterances:
        by_directory.setdefault(utt.directory, []).append(utt)
    for directory, utts in by_directory.items():
        speaker = utts[0].speaker
        lines = "".join(f"{u.id} {u.text}\n" for u in utts)
        (root / directory / f"{speaker.id}-{speaker.chapter}.trans.txt").write_text(lines)


def write_text_files(root: Path, durations: dict[Utterance, int], lm_lines: list[str]) -> None:
    """Transcripts per chapter, dict.ltr.txt, lm_text.txt and SPEAKERS.TXT."""
    write_transcripts(root, durations)
    train_labels = [letters(u.text) for u in durations if u.speaker.split == "train"]
    dictionary_from_labels(train_labels).save(str(root / "dict.ltr.txt"))
    (root / "lm_text.txt").write_text("".join(line + "\n" for line in lm_lines))

    minutes = Counter()
    for utt, samples in durations.items():
        minutes[utt.speaker.id] += samples / SAMPLE_RATE / 60
    rows = [f"{s.id:<5} | {s.sex} | {s.split:<6} | {minutes[s.id]:5.2f} | espeak-ng {s.voice} pitch {s.pitch}\n"
            for s in SPEAKERS if minutes[s.id] > 0]
    header = ("; Demo corpus speakers, synthesised with espeak-ng by scripts/make_speech_corpus.py\n"
              "; ID  |SEX| SUBSET | MINUTES | NAME\n")
    (root / "SPEAKERS.TXT").write_text(header + "".join(rows))


GENERATED = [*SPLITS, "dict.ltr.txt", "lm_text.txt", "SPEAKERS.TXT"]


def clear(root: Path, names, overwrite: bool) -> None:
    """Remove the generator's earlier output under root, or stop when there is some and overwrite is not set."""
    if shutil.which("espeak-ng") is None:
        sys.exit("error: espeak-ng is not on PATH; install it (Debian: apt-get install espeak-ng) "
                 "or use the committed corpus in demo/corpus")
    existing = [name for name in names if (root / name).exists()]
    if existing and not overwrite:
        sys.exit(f"error: {root} already holds a corpus ({', '.join(existing)}); pass --overwrite to replace it")
    for name in existing:
        path = root / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def generate(root: Path, seed: int, utts_per_speaker: dict[str, int], lm_sentences: int,
             workers: int, overwrite: bool) -> dict[Utterance, int]:
    """Write the whole corpus under root; returns the number of samples of every utterance."""
    clear(root, GENERATED, overwrite)
    utterances, lm_lines = plan_corpus(seed, utts_per_speaker, lm_sentences)
    durations = synthesise_all(root, utterances, workers)
    write_text_files(root, durations, lm_lines)
    return durations


def generate_extra(root: Path, seed: int, utts_per_speaker: dict[str, int], workers: int,
                   overwrite: bool) -> dict[Utterance, int]:
    """Write the pool and unseen-voices splits under root; returns the number of samples of every utterance."""
    clear(root, EXTRA_SPLITS, overwrite)
    durations = synthesise_all(root, plan_extra(seed, utts_per_speaker), workers)
    write_transcripts(root, durations)
    return durations


def synthesise_all(root: Path, utterances: list[Utterance], workers: int) -> dict[Utterance, int]:
    """Synthesise the utterances in parallel into their folders under root; returns their sample counts."""
    for directory in {u.directory for u in utterances}:
        (root / directory).mkdir(parents=True, exist_ok=True)
    durations = {}
    step = max(1, len(utterances) // 10)
    with multiprocessing.Pool(workers) as pool:
        samples = pool.imap(functools.partial(synthesise, root=root), utterances, chunksize=4)
        try:
            for done, (utt, n) in enumerate(zip(utterances, samples), 1):
                durations[utt] = n
                if done % step == 0 or done == len(utterances):
                    print(f"synthesised {done}/{len(utterances)} utterances", flush=True)
        except RuntimeError as error:
            sys.exit(f"error: {error}")
    return durations


def summary(root: Path, durations: dict[Utterance, int]) -> str:
    """Per-split hours, utterances and speakers, vocabulary size and size on disk."""
    lines = []
    for split in dict.fromkeys(u.speaker.split for u in durations):
        utts = [u for u in durations if u.speaker.split == split]
        seconds = sum(durations[u] for u in utts) / SAMPLE_RATE
        speakers = {u.speaker.id for u in utts}
        lines.append(f"{split:<6} {len(utts):4d} utterances  {seconds / 60:6.2f} min ({seconds / 3600:.3f} h)  "
                     f"{len(speakers)} speakers")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    lines.append(f"vocabulary {len(vocabulary())} words; {size / 1e6:.2f} MB of files under {root}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="output directory (e.g. demo/corpus)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: the committed corpus)")
    for split, default in DEFAULT_UTTS_PER_SPEAKER.items():
        parser.add_argument(f"--{split}-utts", type=int, default=default, help=f"utterances per {split} speaker")
    for split, default in DEFAULT_EXTRA_UTTS.items():
        parser.add_argument(f"--{split}-utts", type=int, default=default,
                            help=f"utterances per {split} speaker (with --extra)")
    parser.add_argument("--extra", action="store_true",
                        help="write only the unlabelled pool and the unseen-voices split (what make demo adds)")
    parser.add_argument("--lm-sentences", type=int, default=DEFAULT_LM_SENTENCES, help="sentences in lm_text.txt")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="synthesis processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in root")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    if args.extra:
        counts = {split: getattr(args, f"{split}_utts") for split in EXTRA_SPLITS}
        durations = generate_extra(args.root, args.seed, counts, args.workers, args.overwrite)
    else:
        utts_per_speaker = {split: getattr(args, f"{split}_utts") for split in SPLITS}
        durations = generate(args.root, args.seed, utts_per_speaker, args.lm_sentences, args.workers,
                             args.overwrite)
    print(summary(args.root, durations))


if __name__ == "__main__":
    main()
