"""Device and numeric precision of inference: fairseq's ``--cpu`` / ``--fp16`` / ``--bf16`` flags for infer.py,
new/infer.py and the feature tools (scripts/extract_features.py, wav2vec_featurize.py, vq-wav2vec_featurize.py,
examples/hubert/simple_kmeans/dump_hubert_feature.py).

The model keeps fp32 weights and runs under ``torch.autocast``: fp16 on CUDA, bf16 on CUDA or the CPU. CUDA's
autocast computes normalisation and softmax in fp32 (fairseq's fp32 islands: ``Fp32GroupNorm``/``Fp32LayerNorm``,
``utils.softmax(..., dtype=float32)``); the CPU's autocast does not (it runs them in bf16, and a post-LN encoder's
whole residual stream with them), so on the CPU the same ops are sent to fp32 here. fairseq's infer.py casts the
whole model with ``.half()`` instead, which only works on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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


class Fp32Islands(TorchFunctionMode):
    """Runs layer/group norm, softmax and log-softmax on fp32 inputs, so that they return fp32 as CUDA's autocast
    has them (CPU autocast leaves them in bf16); every other op is untouched."""

    OPS = frozenset({F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.layer_norm, torch.group_norm,
                     torch.softmax, torch.log_softmax, torch.Tensor.softmax, torch.Tensor.log_softmax})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            args = tuple(_to_fp32(a) for a in args)
            kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _to_fp32(value):
    """A half-precision tensor as fp32; anything else unchanged."""
    if torch.is_tensor(value) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in at ``precision`` (no autocast for fp32); on the CPU with fp32 norms and
    softmax (``Fp32Islands``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    context = contextlib.ExitStack()
    context.enter_context(torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]))
    if device.type == "cpu":
        context.enter_context(Fp32Islands())
    return context


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cpu``, ``--fp16`` and ``--bf16`` for the argparse feature tools (fairseq's common flags)."""
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast (CUDA only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA or CPU)")
