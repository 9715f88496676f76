#!/usr/bin/env python
"""Peak memory of wav2vec 2.0 pretraining steps with and without ``model.checkpoint_activations``.

Each measurement builds the model in a fresh process and runs two forward+backward steps of the contrastive
loss (masks, negatives, quantizer) on one batch; the peak resident memory (CPU) or the peak of GPU memory
allocated (``--device cuda``) is reported, with the median step time beside it for information.

    python scripts/bench/bench_activation_checkpointing.py --preset small --batch 2 --seconds 5
    python scripts/bench/bench_activation_checkpointing.py --preset large --batch 4 --seconds 15 --device cuda
"""

import argparse
import dataclasses
import statistics
import time

import torch

from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Model

from common import PRESETS, RATE, device, markdown_table, peak_memory, pretraining_config, synchronize, use_device


def build_step(preset: str, checkpoint_activations: bool, batch: int, seconds: float, device_name: str):
    """A callable doing one pretraining forward+backward of the ``preset`` model on a fixed batch."""
    use_device(device_name)  # again in the fresh process that measures CPU memory
    cfg = dataclasses.replace(pretraining_config(preset), checkpoint_activations=checkpoint_activations)
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).to(device()).train()
    source = torch.randn(batch, int(seconds * RATE), device=device())

    def step():
        out = model(source)
        logits = model.get_logits(out).float()
        loss = torch.nn.functional.cross_entropy(logits, model.get_targets(None, out), reduction="sum")
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def step_time(preset: str, checkpoint_activations: bool, batch: int, seconds: float, device_name: str,
              repeats: int) -> float:
    step = build_step(preset, checkpoint_activations, batch, seconds, device_name)
    step()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_device(args.device)
    rows = []
    for checkpointing in (False, True):
        build_args = (args.preset, checkpointing, args.batch, args.seconds, args.device)
        peak = peak_memory(build_step, build_args, threads=args.threads)
        seconds = step_time(*build_args, args.repeats)
        rows.append([str(checkpointing).lower(), f"{peak / 2**20:.0f}", f"{seconds:.3f}"])
    saved = 1 - float(rows[1][1]) / float(rows[0][1])
    print(f"wav2vec 2.0 {args.preset}, batch {args.batch} x {args.seconds:g} s, {args.device}: "
          f"checkpoint_activations saves {100 * saved:.0f}% of the peak memory")
    print(markdown_table(["checkpoint_activations", "peak memory (MiB)", "step time (s)"], rows))


if __name__ == "__main__":
    main()
