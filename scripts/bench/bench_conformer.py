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

from common import NO_DROPOUT, compare_backbones, timing_arguments


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pos-enc-type", choices=["rel_pos", "rope"], default="rel_pos")
    timing_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, theirs = build_pair(args.pos_enc_type)
    compare_backbones(f"conformer {args.pos_enc_type}", ours, theirs, args.batch, args.seconds, args.repeats,
                      args.threads)

if __name__ == "__main__":
    main()
