#!/usr/bin/env python
"""Write temperature-sampled corpus weights (p ∝ hours^alpha) for task.multi_corpus_sampling_weights.

    python examples/wav2vec/multi_corpus_weights.py /manifests eng:train,fra:train,deu:train --alpha 0.5

Reads each corpus's {data}/{file}.tsv (its frame counts; the audio is not opened), prints a table of hours, shares
and weights, then the overrides to train with:
task.multi_corpus_keys=eng,fra,deu task.multi_corpus_sampling_weights=0.57,0.29,0.14 (with --output, the weights
string is also written to a file). alpha = 0.5 is XLSR-53/XLS-R's language sampling; 1 keeps the data's
proportions, 0 is uniform. fairseq has no such option for audio: XLS-R upsampled by repeating manifest lines
(fairseq#2997). fairseq_lite draws the corpus of each batch with these weights instead; batches bounded by
dataset.max_tokens hold similar amounts of audio, so a weight is close to the corpus's share of the audio seen.
"""

import argparse

from fairseq_lite.cli.common import run_cli
from fairseq_lite.data.multi_corpus import format_weights, temperature_table
from fairseq_lite.file_io import AtomicOutputs


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder of the manifests (task.data)")
    parser.add_argument("split", help="the corpora as key:file,key:file (dataset.train_subset), e.g. eng:train,fra:train")
    parser.add_argument("--alpha", type=float, default=0.5, help="temperature exponent (default 0.5, as XLS-R)")
    parser.add_argument("--sample-rate", type=int, default=16_000, help="sample rate of the frame counts")
    parser.add_argument("--output", help="also write the weights string to this file")
    args = parser.parse_args(argv)
    rows = temperature_table(args.data, args.split, args.alpha, args.sample_rate)
    print(f"{'corpus':<12} {'utterances':>10} {'hours':>12} {'share':>8} {'weight':>8}  manifest")
    for row in rows:
        print(f"{row.key:<12} {row.utterances:>10} {row.hours:>12.3f} {row.share:>8.4f} {row.weight:>8.4f}  {row.manifest}")
    weights = format_weights([row.weight for row in rows])
    if args.output:
        with AtomicOutputs() as out:
            out.open(args.output).write(weights + "\n")
    print(f"task.multi_corpus_keys={','.join(row.key for row in rows)} task.multi_corpus_sampling_weights={weights}")
    return 0


if __name__ == "__main__":
    run_cli(main)
