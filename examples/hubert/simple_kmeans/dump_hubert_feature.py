#!/usr/bin/env python
"""Write layer-k features of a HuBERT or wav2vec 2.0 checkpoint for one manifest shard (fairseq's
simple_kmeans/dump_hubert_feature.py and dump_w2v2_feature.py in one).

    python examples/hubert/simple_kmeans/dump_hubert_feature.py ${tsv_dir} ${split} ${ckpt_path} ${layer} \\
        ${nshard} ${rank} ${feat_dir} [--max_chunk 1600000] [--device cpu]

``layer`` is 1-based (HuBERT's ``output_layer``; 6 or 9 of a Base model in fairseq's recipe). The checkpoint
may be pretrained (``hubert``, ``wav2vec2``) or CTC fine-tuned (the model inside is used); the waveform is
layer-normed when the checkpoint's task says ``normalize``, read at its ``sample_rate`` (other rates are
resampled), and run in pieces of at most ``--max_chunk`` samples (lower it when out of memory). Output:
``${feat_dir}/${split}_${rank}_${nshard}.{npy,len}`` as dump_mfcc_feature.py writes them. Runs on the GPU when
there is one, else on the CPU (fairseq requires CUDA).
"""

import argparse
import sys

from tqdm import tqdm

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.feature_shards import dump_feature_shard, read_shard_audio
from fairseq_lite.inference_precision import add_precision_arguments, inference_device, inference_precision
from fairseq_lite.layer_features import check_layer, layer_features, load_encoder, min_input_samples


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv_dir", help="folder holding ${split}.tsv")
    parser.add_argument("split", help="manifest name without .tsv (train, valid, ...)")
    parser.add_argument("ckpt_path", help="HuBERT or wav2vec 2.0 checkpoint")
    parser.add_argument("layer", type=int, help="transformer layer whose output is written, 1-based")
    parser.add_argument("nshard", type=int, help="number of shards the manifest is cut into")
    parser.add_argument("rank", type=int, help="the shard to write, 0 … nshard-1")
    parser.add_argument("feat_dir", help="output folder")
    parser.add_argument("--max_chunk", type=int, default=1600000, help="samples the model sees at once")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_precision_arguments(parser)
    return parser


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args.feat_dir, "feat_dir")
    device = inference_device(args.cpu, args.device)
    precision = inference_precision(args.fp16, args.bf16, device)
    model, normalize, sample_rate = load_encoder(args.ckpt_path, device)
    check_layer(model, args.layer)
    min_samples = min_input_samples(model)

    def featurize(utterance):
        wav = read_shard_audio(utterance, sample_rate, min_samples)
        return layer_features(model, wav, args.layer, normalize, args.max_chunk, precision).float().cpu().numpy()

    dump_feature_shard(f"{args.tsv_dir}/{args.split}.tsv", args.split, args.nshard, args.rank, args.feat_dir,
                       featurize, lambda items: tqdm(items, unit="file", file=sys.stderr))
    return 0


if __name__ == "__main__":
    run_cli(main)
