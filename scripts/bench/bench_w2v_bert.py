#!/usr/bin/env python
"""w2v-BERT 2.0: our ``w2v_bert`` encoder against HF's ``Wav2Vec2BertModel``, forward and forward+backward.

The 2.0 layer shapes (1024 wide, FFN 4096, 16 heads, Shaw positions clipped to [-64, +8], causal depthwise conv
of kernel 31, 160-d input) at ``--layers`` depth (4 by default instead of 24, so that it runs on a few CPU cores
in minutes: every layer costs the same, the ratio carries over). HF's model is built from its config with random
weights, ours from the same config (``w2v_bert_config_from_hf``) with HF's weights copied across through the
converter's key map. Both read the same 160-d features at 50 Hz (ours ``encode``, HF ``input_features`` +
``attention_mask``); forward in eval mode under no_grad, forward+backward in training mode with every dropout
off (the same arithmetic on both sides). The outputs' max abs difference is printed before timing.

    python scripts/bench/bench_w2v_bert.py --layers 4 --repeats 5 --threads 2
"""

import argparse

import torch
import transformers

from fairseq_lite.interop.huggingface_w2v_bert import (w2v_bert_config_from_hf, w2v_bert_from_hf_state_dict,
                                                        with_mask_emb)
from fairseq_lite.models import MODEL_REGISTRY
from fairseq_lite.models.w2v_bert.w2v_bert import W2vBertModel

from common import alternate, device, markdown_table, timing_arguments

FRAME_RATE = 50  # encoder frames per second (100 Hz fbank, two frames stacked)
LAYERS = 4
#: HF's dropouts, layerdrop and SpecAugment off
HF_NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                     conformer_conv_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)


def build_pair(layers: int = LAYERS):
    """(ours ``W2vBertModel``, HF ``Wav2Vec2BertModel``) of w2v-BERT 2.0's layer shapes, ``layers`` deep, with
    identical weights, in eval mode, on the suite's device."""
    torch.manual_seed(0)
    theirs = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(num_hidden_layers=layers, **HF_NO_DROPOUT))
    cfg = MODEL_REGISTRY.build_config(w2v_bert_config_from_hf(theirs.config), from_checkpoint=True)
    ours = W2vBertModel(cfg)
    weights = with_mask_emb(w2v_bert_from_hf_state_dict(theirs.state_dict()), cfg.encoder_embed_dim)
    ours.load_state_dict(weights, strict=True)  # the pretraining heads, which HF lacks, keep their fresh init
    return ours.to(device()).eval(), theirs.to(device()).eval()


def features(batch: int, seconds: float):
    """Random 160-d features B×T at 50 Hz and HF's attention mask (every frame valid)."""
    torch.manual_seed(1)
    x = torch.randn(batch, int(seconds * FRAME_RATE), 160, device=device())
    return x, torch.ones(x.shape[:2], dtype=torch.long, device=device())


def max_abs_diff(layers: int, batch: int, seconds: float) -> float:
    """Max |ours − HF| of the last hidden state on the benchmark's input (eval mode)."""
    ours, theirs = build_pair(layers)
    x, attention_mask = features(batch, seconds)
    with torch.no_grad():
        mine = ours.encode(x, attention_mask == 0)["x"]
        return float((mine - theirs(x, attention_mask=attention_mask).last_hidden_state).abs().max())


def forward_steps(batch: int, seconds: float, layers: int = LAYERS):
    """Step callables {"fairseq_lite": …, "transformers": …}: one eval forward under no_grad each."""
    ours, theirs = build_pair(layers)
    x, attention_mask = features(batch, seconds)
    padding = attention_mask == 0

    def ours_step():
        with torch.no_grad():
            ours.encode(x, padding)

    def hf_step():
        with torch.no_grad():
            theirs(x, attention_mask=attention_mask)

    return {"fairseq_lite": ours_step, "transformers": hf_step}


def train_steps(batch: int, seconds: float, layers: int = LAYERS):
    """Step callables: forward+backward of the mean square output in training mode (dropout off) each."""
    ours, theirs = build_pair(layers)
    ours.train(), theirs.train()
    x, attention_mask = features(batch, seconds)
    padding = attention_mask == 0

    def ours_step():
        ours.encode(x, padding)["x"].pow(2).mean().backward()
        ours.zero_grad(set_to_none=True)

    def hf_step():
        theirs(x, attention_mask=attention_mask).last_hidden_state.pow(2).mean().backward()
        theirs.zero_grad(set_to_none=True)

    return {"fairseq_lite": ours_step, "transformers": hf_step}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=LAYERS)
    timing_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diff = max_abs_diff(args.layers, args.batch, args.seconds)
    audio = args.batch * args.seconds
    rows = []
    for what, factory in (("forward", forward_steps), ("forward+backward", train_steps)):
        times = alternate(factory(args.batch, args.seconds, args.layers), args.repeats)
        ours, hf = times["fairseq_lite"], times["transformers"]
        rows.append([what, f"{audio / ours['wall']:.2f}", f"{audio / hf['wall']:.2f}",
                     f"{hf['wall'] / ours['wall']:.2f}×", f"{hf['cpu'] / ours['cpu']:.2f}×"])
    print(f"w2v-BERT 2.0 layer shapes, {args.layers} layers, batch {args.batch} × {args.seconds:g} s, fp32, "
          f"{args.threads} threads, median of {args.repeats} alternating runs after warm-up; max |Δ| of outputs "
          f"{diff:.1e}\n")
    print(markdown_table(["step", "ours audio s / s", "HF audio s / s", "speed vs HF", "speed vs HF (CPU)"], rows))


if __name__ == "__main__":
    main()
