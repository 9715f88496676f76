#!/usr/bin/env python
"""Write vq-wav2vec codes as text, one line per audio file (fairseq's vq-wav2vec_featurize.py).

    python examples/wav2vec/vq-wav2vec_featurize.py --data-dir /manifest/path --output-dir /path/to/output \\
        --checkpoint /model/path/checkpoint_best.pt --split train valid test --extension tsv

``--extension tsv`` reads the manifests ``{data-dir}/{split}.tsv``; any other extension globs
``{data-dir}/{split}/**/*.{extension}``. Each file becomes one line of ``{output-dir}/{split}.src`` (with
``.{shard}`` appended when sharding): one token per frame, the G group indices joined by ``-``
(``12-301 12-87 ...``), from the quantizer over the CNN features (``vector_quantizer.forward_idx``).
``--labels`` writes ``{split}.lbl`` alongside: a file with one label per audio file, or an extension of
label files next to the audio (``utt1.wav`` → ``utt1.<labels>``). Audio longer than ``--max-size``
samples is quantised in equal chunks whose codes are joined. Audio not at 16 kHz is resampled.
"""

import argparse
import glob
import logging
import math
import os
import sys
from typing import List, Optional

import torch
from tqdm import tqdm

from fairseq_lite.checkpoint_utils import load_model_ensemble_and_task
from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.audio import read_audio
from fairseq_lite.data.manifest import load_manifest
from fairseq_lite.errors import CheckpointError, ConfigError, DataError
from fairseq_lite.file_io import AtomicOutputs
from fairseq_lite.inference_precision import add_precision_arguments, autocast, inference_device, inference_precision

logger = logging.getLogger("vq-wav2vec_featurize")

SAMPLE_RATE = 16000


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="vq-wav2vec checkpoint")
    parser.add_argument("--data-parallel", action="store_true",
                        help="accepted for fairseq compatibility; files are coded one at a time on one device")
    parser.add_argument("--output-dir", required=True, help="where to write {split}.src (created)")
    parser.add_argument("--data-dir", required=True, help="folder of manifests (--extension tsv) or split folders")
    parser.add_argument("--splits", required=True, nargs="+", help="splits to code (--split also works)")
    parser.add_argument("--extension", required=True, help="'tsv' to read manifests, else the audio extension")
    parser.add_argument("--labels", default=None,
                        help="a file with one label per audio file, or the extension of label files next to the audio")
    parser.add_argument("--shard", type=int, default=None, help="this shard's index (with --num-shards)")
    parser.add_argument("--num-shards", type=int, default=None, help="code every num_shards-th file")
    parser.add_argument("--max-size", type=int, default=1300000, help="longer audio is coded in equal chunks")
    parser.add_argument("--log-format", default="tqdm", choices=["json", "none", "simple", "tqdm"],
                        help="tqdm shows a progress bar; the others log a summary only")
    add_precision_arguments(parser)
    return parser


def audio_files(args, split: str) -> List[str]:
    """The split's audio paths: from ``{split}.tsv`` or by globbing ``{split}/**/*.{ext}`` (sorted)."""
    if args.extension.lstrip(".") == "tsv":
        manifest = load_manifest(os.path.join(args.data_dir, f"{split}.tsv"))
        return [manifest.full_path(i) for i in range(len(manifest.names))]
    pattern = os.path.join(args.data_dir, split, "**", "*." + args.extension.lstrip("."))
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        raise DataError(f"no files match {pattern}: check --data-dir, --splits and --extension")
    return files


def labels_for(args, files: List[str], split: str) -> Optional[List[str]]:
    """One label per file: the lines of the ``--labels`` file, or each file's ``<stem>.<labels>`` content."""
    if args.labels is None:
        return None
    if os.path.isfile(args.labels):
        with open(args.labels, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if len(lines) != len(files):
            raise DataError(f"{args.labels} has {len(lines)} lines but split '{split}' has {len(files)} audio "
                            "files: give one label per file, in manifest order")
        return lines
    labels = []
    for path in files:
        label_path = os.path.splitext(path)[0] + "." + args.labels.lstrip(".")
        if not os.path.isfile(label_path):
            raise DataError(f"label file {label_path} does not exist (--labels {args.labels} is neither a file "
                            "nor the extension of label files next to the audio)")
        with open(label_path, encoding="utf-8") as f:
            labels.append(" ".join(f.read().split()))
    return labels


def load_vq_model(path: str, device: torch.device) -> torch.nn.Module:
    """The vq-wav2vec model of a checkpoint, in eval mode on ``device``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    models, _, _ = load_model_ensemble_and_task([path])
    model = models[0]
    if getattr(model, "vector_quantizer", None) is None:
        raise CheckpointError(f"{path} has no vector quantizer (not a vq-wav2vec model): use "
                              "examples/wav2vec/wav2vec_featurize.py for continuous wav2vec 1.0 features")
    return model.eval().to(device)


@torch.inference_mode()
def encode(model: torch.nn.Module, wav: torch.Tensor, max_size: int) -> str:
    """The codes of one waveform as ``g0-g1 g0-g1 ...``, chunking audio longer than ``max_size`` samples."""
    chunks = torch.tensor_split(wav, math.ceil(wav.numel() / max_size))
    indices = [model.vector_quantizer.forward_idx(model.feature_extractor(chunk.unsqueeze(0)))[1][0]
               for chunk in chunks]
    return " ".join("-".join(str(int(i)) for i in frame) for frame in torch.cat(indices).cpu().tolist())


def code_split(model, args, split: str, device: torch.device) -> int:
    files = audio_files(args, split)
    labels = labels_for(args, files, split)
    suffix = ""
    if args.num_shards is not None:
        files = files[args.shard :: args.num_shards]
        labels = labels[args.shard :: args.num_shards] if labels is not None else None
        suffix = f".{args.shard}"
    with AtomicOutputs() as outputs:  # the split's files replace earlier ones only when every file is coded
        out = outputs.open(os.path.join(args.output_dir, f"{split}.src{suffix}"), "w", encoding="utf-8")
        for path in tqdm(files, desc=split, unit="file", file=sys.stderr, disable=args.log_format != "tqdm"):
            wav = torch.from_numpy(read_audio(path, SAMPLE_RATE)).to(device)
            print(encode(model, wav, args.max_size), file=out)
        if labels is not None:
            outputs.open(os.path.join(args.output_dir, f"{split}.lbl{suffix}"), "w",
                         encoding="utf-8").writelines(label + "\n" for label in labels)
    return len(files)


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    if (args.shard is None) != (args.num_shards is None):
        raise ConfigError("--shard and --num-shards go together: give both or neither")
    if args.num_shards is not None and not 0 <= args.shard < args.num_shards:
        raise ConfigError(f"--shard must be in [0, {args.num_shards}), got {args.shard}")
    if args.max_size < 1:
        raise ConfigError(f"--max-size must be positive, got {args.max_size}")
    check_output_dir(args.output_dir, "--output-dir")
    device = inference_device(args.cpu)
    precision = inference_precision(args.fp16, args.bf16, device)
    model = load_vq_model(args.checkpoint, device)
    os.makedirs(args.output_dir, exist_ok=True)
    for split in args.splits:
        with autocast(device, precision):
            count = code_split(model, args, split, device)
        logger.info("%s: wrote the codes of %d files to %s", split, count, args.output_dir)
    return 0


if __name__ == "__main__":
    run_cli(main)
