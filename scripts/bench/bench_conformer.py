#!/usr/bin/env python
"""Conformer BASE-sized wav2vec 2.0 (rel_pos or rope): our forward+backward against HF's Wav2Vec2ConformerModel.

Both models hold identical weights (mapped with fairseq_lite.interop.huggingface), run in fp32 in training
mode without masking or dropout, on the same batch. Runs alternate between the two after a warm-up; the
medians and their ratio are printed (ratio > 1: we are faster). HF's conformer exists only in the pre-LN
layout, so both use layer_norm_first (the cost is the same as post-LN).

    python scripts/bench/bench_conformer.py --pos-enc-type rel_pos --repeats 5 --threads 2
"""

import argparse

import torch
from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel

from fairseq_lite.interop.huggingface import hf_conformer_config_kwargs, wav2vec2_conformer_to_hf_state_dict
from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

from common import NO_DROPOUT, alternate


def build_pair(pos_enc_type: str):
    cfg = Wav2Vec2Config(
        layer_type="conformer", attn_type="espnet", pos_enc_type=pos_enc_type, layer_norm_first=True,
        extractor_mode="layer_norm", conv_bias=True, quantize_targets=True, final_dim=256, **NO_DROPOUT,
    )
    ours = Wav2Vec2Model(cfg)
    config = Wav2Vec2ConformerConfig(**{**hf_conformer_config_kwargs(cfg), "mask_time_prob": 0.0})
    config._attn_implementation = "sdpa"
    theirs = Wav2Vec2ConformerModel(config)
    mapped = wav2vec2_conformer_to_hf_state_dict(ours.state_dict(), hf_prefix="")
    backbone = theirs.state_dict().keys()  # HF's bare model has no quantizer/heads (nor mask_emb without masking)
    theirs.load_state_dict({k: v for k, v in mapped.items() if k in backbone}, strict=True)
    return ours.train(), theirs.train()


def step_ours(model, source):
    out = model(source, mask=False, features_only=True)["x"]
    out.float().pow(2).mean().backward()


def step_hf(model, source):
    out = model(source).last_hidden_state
    out.float().pow(2).mean().backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pos-enc-type", choices=["rel_pos", "rope"], default="rel_pos")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, theirs = build_pair(args.pos_enc_type)
    source = torch.randn(args.batch, int(args.seconds * 16000))

    def run(model, step):
        def once():
            step(model, source)
            model.zero_grad(set_to_none=True)
        return once

    times = alternate({"fairseq_lite": run(ours, step_ours), "transformers": run(theirs, step_hf)}, args.repeats)
    medians = {name: t["wall"] for name, t in times.items()}
    print(f"conformer {args.pos_enc_type}, batch {args.batch} x {args.seconds:g} s, fp32, {args.threads} threads, "
          f"median of {args.repeats} forward+backward")
    for name, median in medians.items():
        print(f"  {name:13s} {median:.3f} s")
    print(f"  speed-up vs transformers: {medians['transformers'] / medians['fairseq_lite']:.2f}x")


if __name__ == "__main__":
    main()
