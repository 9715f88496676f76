"""Device and numeric precision of inference: fairseq's ``--cpu`` / ``--fp16`` / ``--bf16`` flags for infer.py,
new/infer.py and the feature tools (scripts/extract_features.py, wav2vec_featurize.py, vq-wav2vec_featurize.py,
examples/hubert/simple_kmeans/dump_hubert_feature.py).

The model keeps fp32 weights and runs under ``torch.autocast``: fp16 on CUDA, bf16 on CUDA or the CPU. Autocast
keeps fairseq's fp32 islands (the CNN's group/layer norm, softmax, the logits' log-softmax) in fp32 by itself.
fairseq's infer.py casts the whole model with ``.half()`` instead, which only works on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Optional

import torch

from fairseq_lite.errors import ConfigError

#: dtype of each precision name; fp32 runs without autocast
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def inference_device(cpu: bool = False, device: Optional[str] = None) -> torch.device:
    """``--device`` when given, else CUDA when there is a GPU and ``--cpu`` is not set, else the CPU."""
    if device is not None:
        if cpu and not device.startswith("cpu"):
            raise ConfigError(f"--cpu and --device {device} contradict each other: give one of them")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def inference_precision(fp16: bool, bf16: bool, device: torch.device) -> str:
    """'fp32', 'fp16' or 'bf16' from fairseq's ``--fp16`` / ``--bf16`` flags, checked against the device."""
    if fp16 and bf16:
        raise ConfigError("--fp16 and --bf16 are both set: choose one precision")
    if fp16 and device.type != "cuda":
        raise ConfigError(f"--fp16 needs a CUDA GPU (the model runs on {device}): on the CPU use --bf16")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in at ``precision`` (no autocast for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cpu``, ``--fp16`` and ``--bf16`` for the argparse feature tools (fairseq's common flags)."""
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast (CUDA only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA or CPU)")
