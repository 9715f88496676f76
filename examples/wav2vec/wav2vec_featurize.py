#!/usr/bin/env python
"""Write wav2vec 1.0 features as fairseq's HDF5 ``.h5context`` files (fairseq's wav2vec_featurize.py).

    python examples/wav2vec/wav2vec_featurize.py --input /path/to/task/waves --output /path/to/output \\
        --model /model/path/checkpoint_best.pt --split train valid test

For every ``{input}/{split}/*.{ext}`` (sorted) it writes ``{output}/{split}/<name>.h5context`` with the
datasets ``features`` (the T×C array, time-major, flattened) and ``info`` = [100.0 frames/s, T, C];
every other file of the split folder (labels, lexicons) is copied unless ``--no-copy-labels``.
Features are the aggregator's context vectors ``c``, or the CNN's ``z`` with ``--use-feat``.
Audio at another rate is resampled to 16 kHz (fairseq stopped with an assertion). fairseq meant ``info``
to hold those three numbers but passed them as the dataset's shape; here it holds them.
"""

import argparse
import glob
import logging
import os
import shutil
import sys

import h5py
import numpy as np
import torch
from tqdm import tqdm

from fairseq_lite.checkpoint_utils import load_model_ensemble_and_task
from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.audio import read_audio
from fairseq_lite.errors import CheckpointError, DataError
from fairseq_lite.file_io import AtomicOutputs
from fairseq_lite.inference_precision import add_precision_arguments, autocast, inference_device, inference_precision

logger = logging.getLogger("wav2vec_featurize")

SAMPLE_RATE = 16000
FRAME_RATE = SAMPLE_RATE // 160  # wav2vec 1.0's CNN has a total stride of 160 samples


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", "-i", required=True, help="input directory holding one folder per split")
    parser.add_argument("--output", "-o", required=True, help="output directory")
    parser.add_argument("--model", required=True, help="path to a wav2vec 1.0 checkpoint")
    parser.add_argument("--split", required=True, nargs="+", help="split folders to featurize, e.g. train valid")
    parser.add_argument("--ext", default="wav", help="audio file extension")
    parser.add_argument("--no-copy-labels", action="store_true",
                        help="do not copy the split folder's other files (labels) to the output")
    parser.add_argument("--use-feat", action="store_true",
                        help="write the CNN features z instead of the aggregator output c")
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index (the CPU is used when there is no GPU)")
    add_precision_arguments(parser)
    return parser


def load_wav2vec(path: str, device: torch.device) -> torch.nn.Module:
    """The wav2vec 1.0 model of a checkpoint, in eval mode on ``device``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    models, _, _ = load_model_ensemble_and_task([path])
    model = models[0]
    if not hasattr(model, "feature_aggregator"):
        raise CheckpointError(f"{path} holds a {type(model).__name__}, not a wav2vec 1.0 model: use "
                              "scripts/extract_features.py for wav2vec 2.0 checkpoints")
    return model.eval().to(device)


@torch.inference_mode()
def featurize(model: torch.nn.Module, wav: np.ndarray, use_feat: bool, device: torch.device) -> np.ndarray:
    """Features C×T of one waveform: ``z`` from the CNN, or ``c`` from the aggregator."""
    z = model.feature_extractor(torch.from_numpy(wav).to(device).unsqueeze(0))
    features = z if use_feat else model.feature_aggregator(z)
    return features.squeeze(0).float().cpu().numpy()


def write_h5context(path: str, features: np.ndarray) -> None:
    """fairseq's layout: ``features`` = the C×T array transposed to T×C and flattened, ``info`` = [100, T, C]."""
    channels, frames = features.shape
    with AtomicOutputs() as outputs, h5py.File(outputs.open(path, "wb"), "w") as out:
        out.create_dataset("features", data=features.T.flatten())
        out.create_dataset("info", data=np.array([float(FRAME_RATE), frames, channels]))


def featurize_split(model, args, split: str, device: torch.device) -> int:
    """Featurize one split folder; returns the number of audio files written."""
    src = os.path.join(args.input, split)
    if not os.path.isdir(src):
        raise DataError(f"split folder {src} does not exist: --input must hold one folder per --split")
    dest = os.path.join(args.output, split)
    os.makedirs(dest, exist_ok=True)
    suffix = "." + args.ext.lstrip(".")
    files = sorted(glob.glob(os.path.join(src, "*" + suffix)))
    if not files:
        raise DataError(f"no *{suffix} files in {src}: check --input, --split and --ext")
    for path in tqdm(files, desc=split, unit="file", file=sys.stderr):
        features = featurize(model, read_audio(path, SAMPLE_RATE), args.use_feat, device)
        write_h5context(os.path.join(dest, os.path.basename(path)[: -len(suffix)] + ".h5context"), features)
    if not args.no_copy_labels:
        for name in sorted(os.listdir(src)):
            other = os.path.join(src, name)
            if os.path.isfile(other) and not name.endswith(suffix):
                shutil.copy(other, dest)
    return len(files)


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args.output, "--output")
    device = inference_device(args.cpu, f"cuda:{args.gpu}" if torch.cuda.is_available() and not args.cpu else None)
    precision = inference_precision(args.fp16, args.bf16, device)
    model = load_wav2vec(args.model, device)
    for split in args.split:
        with autocast(device, precision):
            count = featurize_split(model, args, split, device)
        logger.info("%s: wrote %d .h5context files to %s", split, count, os.path.join(args.output, split))
    return 0


if __name__ == "__main__":
    run_cli(main)
