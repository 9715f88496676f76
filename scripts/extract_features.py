#!/usr/bin/env python
"""Extract wav2vec 2.0, HuBERT or w2v-BERT representations (pretrained or CTC checkpoints) to .npy or HDF5 files.

    python scripts/extract_features.py --checkpoint wav2vec_small.pt --output feats/ train.tsv
    python scripts/extract_features.py --checkpoint model.pt --layers 3 7 --format h5 --output feats/ waves/

Inputs are manifests (``.tsv``), audio files, or folders searched recursively for ``--ext`` files.
``--layers`` picks transformer layers by 0-based index (fairseq's ``extract_features(layer=i)``; negative
counts from the end), ``all`` takes every layer; without it the model's final output is written (for
pre-LN models that is after the encoder's last LayerNorm). Files are read in length-sorted batches of at
most ``--max-tokens`` samples, padded with a padding mask, and trimmed back to each file's frame count.

Outputs: ``npy`` → one ``<name>.npy`` per audio file (relative path kept), shape T×C for one layer or
L×T×C for several; ``h5`` → one ``features.h5`` with a dataset per file (same shapes) and the layer list in
its ``layers`` attribute. Models whose CNN uses group norm over time (Base: ``extractor_mode: default``)
see padding in that norm, so batched features differ from one-file-at-a-time ones (by up to 3 on values of 8 for
the demo HuBERT): for them the default is one file per batch, and an explicit ``--max-tokens`` batches anyway.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fairseq_lite.cli.common import check_output_dir, run_cli, setup_logging
from fairseq_lite.data.audio import audio_frames, read_audio
from fairseq_lite.data.manifest import load_manifest
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.file_io import AtomicOutputs
from fairseq_lite.inference_precision import add_precision_arguments, autocast, inference_device, inference_precision
from fairseq_lite.layer_features import encoder_outputs, load_encoder, output_frames, padding_changes_features

logger = logging.getLogger("extract_features")

SAMPLE_RATE = 16000
#: --max-tokens of models whose features do not depend on the batch (100 s of 16 kHz audio)
BATCH_SAMPLES = 1_600_000


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="manifest .tsv files, audio files or folders")
    parser.add_argument("--checkpoint", required=True,
                        help="wav2vec 2.0, HuBERT or w2v-BERT checkpoint (wav2vec2, wav2vec_ctc, hubert, hubert_ctc, "
                        "w2v_bert, w2v_bert_ctc)")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="0-based transformer layers (negative counts from the end) or 'all'; default: final output")
    parser.add_argument("--format", choices=["npy", "h5"], default="npy", help="one .npy per file, or one features.h5")
    parser.add_argument("--ext", default="wav", help="audio extension searched for in input folders")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"samples per batch (0: one file per batch, no padding); default {BATCH_SAMPLES}, or 0 "
                        "for models whose group-norm CNN would see the padding (Base)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_precision_arguments(parser)
    return parser


def list_audio(inputs: Sequence[str], ext: str) -> List[Tuple[str, str]]:
    """(name, path) per audio file: manifest entries, single files, or ``**/*.{ext}`` under folders.
    ``name`` is the path relative to its manifest root or folder, without the extension."""
    files: List[Tuple[str, str]] = []
    for item in inputs:
        if item.endswith(".tsv"):
            manifest = load_manifest(item)
            files += [(manifest.names[i], manifest.full_path(i)) for i in range(len(manifest.names))]
        elif os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "**", "*." + ext.lstrip(".")), recursive=True))
            if not found:
                raise DataError(f"no *.{ext.lstrip('.')} files under {item}: check --ext")
            files += [(os.path.relpath(path, item), path) for path in found]
        elif os.path.isfile(item):
            files.append((os.path.basename(item), item))
        else:
            raise DataError(f"input {item} does not exist")
    names = [os.path.splitext(name)[0] for name, _ in files]
    if len(set(names)) != len(names):
        raise DataError("two inputs map to the same output name: extract them in separate runs")
    return [(name, path) for name, (_, path) in zip(names, files)]


def resolve_layers(spec: Optional[Sequence[str]], num_layers: int) -> Optional[List[int]]:
    """0-based layer indices from ``--layers`` (None: the final output)."""
    if spec is None:
        return None
    if list(spec) == ["all"]:
        return list(range(num_layers))
    layers = []
    for item in spec:
        try:
            index = int(item)
        except ValueError:
            raise ConfigError(f"--layers takes integers or 'all', got {item!r}") from None
        if not -num_layers <= index < num_layers:
            raise ConfigError(f"--layers {index}: the model has {num_layers} layers (0..{num_layers - 1})")
        layers.append(index % num_layers)
    return layers


def batches(files: List[Tuple[str, str]], max_tokens: int) -> Iterator[List[Tuple[str, str]]]:
    """Length-sorted batches whose padded size (count × longest) stays within ``max_tokens`` samples;
    lengths come from the file headers, so audio is read one batch at a time."""
    sizes = []
    for name, path in files:
        frames, rate = audio_header(path)
        sizes.append(frames * SAMPLE_RATE // rate)
    batch: List[Tuple[str, str]] = []
    for i in np.argsort(sizes, kind="stable"):
        if batch and (max_tokens <= 0 or (len(batch) + 1) * sizes[i] > max_tokens):
            yield batch
            batch = []
        batch.append(files[i])
    if batch:
        yield batch


def audio_header(path: str) -> Tuple[int, int]:
    """(samples, sample rate) of an input file; a file whose header cannot be read is a DataError naming it."""
    try:
        return audio_frames(path)
    except DataError:
        raise
    except Exception as e:  # decoders raise many types for corrupt input
        raise DataError(f"{path}: cannot read the audio file ({type(e).__name__}: {str(e).strip() or 'no detail'}); "
                        "remove it from the inputs") from None


@torch.inference_mode()
def extract(model: torch.nn.Module, batch: List[Tuple[str, str]], layers: Optional[List[int]],
            normalize: bool, device: torch.device, precision: str = "fp32") -> List[np.ndarray]:
    """Per file: T×C (final output or one layer) or L×T×C (several layers), trimmed to its own frames, computed
    at ``precision`` (fp32, or fp16/bf16 autocast) and written as float32."""
    waves = [torch.from_numpy(read_audio(path, SAMPLE_RATE)) for _, path in batch]
    lengths = torch.tensor([len(wav) for wav in waves])
    source = torch.zeros(len(batch), int(lengths.max()))
    for i, wav in enumerate(waves):
        source[i, : len(wav)] = F.layer_norm(wav, wav.shape) if normalize else wav
    padding_mask = torch.arange(source.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    last = None if layers is None else max(layers)
    with autocast(device, precision):
        out = encoder_outputs(model, source.to(device), padding_mask.to(device) if len(batch) > 1 else None, last)
    if layers is None:
        stacked = out["x"].unsqueeze(0)
    else:
        stacked = torch.stack([out["layer_results"][i][0] for i in layers])  # L×B×T×C
    frames = output_frames(model, lengths).clamp(max=stacked.size(2))
    result = []
    for i in range(len(batch)):
        features = stacked[:, i, : int(frames[i])].float().cpu().numpy()
        result.append(features[0] if features.shape[0] == 1 else features)
    return result


def main(argv) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args.output, "--output")
    device = inference_device(args.cpu, args.device)
    precision = inference_precision(args.fp16, args.bf16, device)
    files = list_audio(args.inputs, args.ext)
    model, normalize, _ = load_encoder(args.checkpoint, device)
    layers = resolve_layers(args.layers, len(model.encoder.layers))
    max_tokens = args.max_tokens
    if max_tokens is None:
        max_tokens = 0 if padding_changes_features(model) else BATCH_SAMPLES
        if max_tokens == 0:
            logger.info("one file per batch: this model's group-norm CNN would see the padding of a batch "
                        "(pass --max-tokens to batch anyway)")
    with AtomicOutputs() as h5_output:  # features.h5 replaces an earlier one only when complete
        h5 = None
        if args.format == "h5":
            import h5py

            h5 = h5py.File(h5_output.open(os.path.join(args.output, "features.h5"), "wb"), "w")
            h5.attrs["layers"] = np.array(layers if layers is not None else [-1])
        try:
            with tqdm(total=len(files), unit="file", file=sys.stderr) as progress:
                for batch in batches(files, max_tokens):
                    for (name, _), features in zip(batch, extract(model, batch, layers, normalize, device,
                                                                            precision)):
                        if h5 is not None:
                            h5.create_dataset(name, data=features)
                        else:
                            with AtomicOutputs() as npy:
                                np.save(npy.open(os.path.join(args.output, name + ".npy"), "wb"), features)
                    progress.update(len(batch))
        finally:
            if h5 is not None:
                h5.close()
    logger.info("wrote features of %d files to %s", len(files), args.output)
    return 0


if __name__ == "__main__":
    run_cli(main)
