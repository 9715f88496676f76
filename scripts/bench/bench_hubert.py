#!/usr/bin/env python
"""HuBERT BASE: our ``hubert`` backbone forward+backward against HF's ``HubertModel`` (HF has no HuBERT
pretraining head, so the backbones are compared: CNN, projection, positional convolution, 12 layers).

Both hold identical weights (the wav2vec 2.0 key map of fairseq_lite.interop.huggingface: HuBERT's backbone
keys are wav2vec 2.0's), run in fp32 in training mode without masking or dropout, on the same batch.

    python scripts/bench/bench_hubert.py --repeats 5 --threads 2
"""

import argparse

import torch
from transformers import HubertConfig as HFHubertConfig, HubertModel as HFHubertModel

from fairseq_lite.interop.huggingface import hf_hubert_config_kwargs, wav2vec2_to_hf_state_dict
from fairseq_lite.models.hubert.hubert import HubertConfig, HubertModel

from common import NO_DROPOUT, compare_backbones, timing_arguments


def build_pair():
    """(ours ``HubertModel``, HF ``HubertModel``) of HuBERT BASE's shape with identical weights, in training mode."""
    hubert_no_dropout = {k: v for k, v in NO_DROPOUT.items() if k != "dropout_features"}
    cfg = HubertConfig(label_rate=50, final_dim=256, untie_final_proj=True, **hubert_no_dropout)
    torch.manual_seed(0)
    ours = HubertModel(cfg, num_classes=[504])
    config = HFHubertConfig(**{**hf_hubert_config_kwargs(cfg), "mask_time_prob": 0.0})
    config._attn_implementation = "sdpa"
    theirs = HFHubertModel(config)
    heads = ("final_proj.", "label_embs_concat")  # HF's HuBERT has no pretraining head
    mapped = wav2vec2_to_hf_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith(heads)},
                                       hf_prefix="")
    backbone = theirs.state_dict().keys()
    theirs.load_state_dict({k: v for k, v in mapped.items() if k in backbone}, strict=True)
    return ours.train(), theirs.train()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build_pair()
    compare_backbones("HuBERT BASE", ours, theirs, args.batch, args.seconds, args.repeats, args.threads)


if __name__ == "__main__":
    main()
