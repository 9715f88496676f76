#!/usr/bin/env python
"""wav2vec 2.0 BASE (or LARGE): our forward+backward against HF Transformers' Wav2Vec2Model, same weights.

Both models are built from the same config with identical weights (mapped with
fairseq_lite.interop.huggingface) and run in fp32, training mode, without masking, dropout or layerdrop
(so both do the same arithmetic), on the same batch (default 2 × 5 s at 16 kHz). After one warm-up step
each, runs alternate between the two; the medians and their ratio are printed as a markdown table
(ratio > 1: fairseq_lite is faster). Wall time and process CPU time are both reported: on a shared machine
the CPU-time ratio is the steadier of the two.

    python scripts/bench/bench_wav2vec2.py --repeats 5 --threads 2
"""

import argparse
import statistics
import time

import torch
import transformers

from fairseq_lite.interop.huggingface import hf_config_kwargs, wav2vec2_to_hf_state_dict
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                  dropout_features=0.0, encoder_layerdrop=0.0, quantize_targets=True)
PRESETS = {
    "base": dict(final_dim=256, feature_grad_mult=1.0),
    "large": dict(extractor_mode="layer_norm", layer_norm_first=True, final_dim=768, conv_bias=True,
                  encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                  encoder_attention_heads=16),
}


def build_pair(preset: str):
    cfg = Wav2Vec2Config(**PRESETS[preset], **NO_DROPOUT)
    ours = Wav2Vec2Model(cfg)
    config = transformers.Wav2Vec2Config(**{**hf_config_kwargs(cfg), "mask_time_prob": 0.0})
    config._attn_implementation = "sdpa"
    theirs = transformers.Wav2Vec2Model(config)
    mapped = wav2vec2_to_hf_state_dict(ours.state_dict(), hf_prefix="")
    backbone = theirs.state_dict().keys()  # the bare HF model has no quantizer or projection heads
    theirs.load_state_dict({k: v for k, v in mapped.items() if k in backbone}, strict=True)
    return ours.train(), theirs.train()


def step_ours(model, source):
    model(source, mask=False, features_only=True)["x"].pow(2).mean().backward()


def step_hf(model, source):
    model(source).last_hidden_state.pow(2).mean().backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, theirs = build_pair(args.model)
    source = torch.randn(args.batch, int(args.seconds * 16000))
    with torch.no_grad():  # same weights, same numbers
        diff = (ours(source, mask=False, features_only=True)["x"] - theirs(source).last_hidden_state).abs().max()
    runs = {"fairseq_lite": (ours, step_ours, [], []), "transformers": (theirs, step_hf, [], [])}
    for model, step, _, _ in runs.values():  # warm-up
        step(model, source)
        model.zero_grad(set_to_none=True)
    for _ in range(args.repeats):
        for model, step, wall, cpu in runs.values():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step(model, source)
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
            model.zero_grad(set_to_none=True)
    wall = {name: statistics.median(w) for name, (_, _, w, _) in runs.items()}
    cpu = {name: statistics.median(c) for name, (_, _, _, c) in runs.items()}
    print(f"wav2vec 2.0 {args.model.upper()} forward+backward, batch {args.batch} × {args.seconds:g} s, fp32, "
          f"{args.threads} threads, median of {args.repeats} alternating runs after warm-up "
          f"(torch {torch.__version__}, transformers {transformers.__version__}; max |Δ| of outputs {diff:.1e})\n")
    print("| implementation | wall s/step | speed vs transformers | CPU s/step | speed vs transformers (CPU) |")
    print("|---|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {wall[name]:.3f} | {wall['transformers'] / wall[name]:.2f}× "
              f"| {cpu[name]:.3f} | {cpu['transformers'] / cpu[name]:.2f}× |")


if __name__ == "__main__":
    main()
