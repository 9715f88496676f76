#!/usr/bin/env python
"""wav2vec 2.0 BASE (or LARGE, small): our forward+backward against HF Transformers' Wav2Vec2Model, same weights.

The backbone alone (no masking, quantizer or loss; run_all.py times the full pretraining update): both models
hold identical weights and run in fp32, training mode, without dropout or layerdrop, on the same batch
(default 2 × 5 s at 16 kHz); runs alternate after a warm-up, and the medians and their ratio are printed as a
markdown table (ratio > 1: fairseq_lite is faster). Wall and process CPU time are both reported: on a shared
machine the CPU-time ratio is the steadier of the two.

    python scripts/bench/bench_wav2vec2.py --repeats 5 --threads 2
"""

import argparse

import torch
import transformers

from common import PRESETS, alternate, backbone_pair, markdown_table, timing_arguments


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="base")
    timing_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = backbone_pair(args.model)
    source = torch.randn(args.batch, int(args.seconds * 16000))
    with torch.no_grad():  # same weights, same numbers
        diff = (ours(source, mask=False, features_only=True)["x"] - theirs(source).last_hidden_state).abs().max()

    def step_ours():
        ours(source, mask=False, features_only=True)["x"].pow(2).mean().backward()
        ours.zero_grad(set_to_none=True)

    def step_hf():
        theirs(source).last_hidden_state.pow(2).mean().backward()
        theirs.zero_grad(set_to_none=True)

    times = alternate({"fairseq_lite": step_ours, "transformers": step_hf}, args.repeats)
    hf = times["transformers"]
    print(f"wav2vec 2.0 {args.model.upper()} forward+backward, batch {args.batch} × {args.seconds:g} s, fp32, "
          f"{args.threads} threads, median of {args.repeats} alternating runs after warm-up "
          f"(torch {torch.__version__}, transformers {transformers.__version__}; max |Δ| of outputs {diff:.1e})\n")
    print(markdown_table(
        ["implementation", "wall s/step", "speed vs transformers", "CPU s/step", "speed vs transformers (CPU)"],
        [[name, f"{t['wall']:.3f}", f"{hf['wall'] / t['wall']:.2f}×", f"{t['cpu']:.3f}", f"{hf['cpu'] / t['cpu']:.2f}×"]
         for name, t in times.items()]))


if __name__ == "__main__":
    main()
