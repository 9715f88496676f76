"""fairseq's TPU rule (``fairseq.utils.is_xla_tensor``): on an XLA device, code that would read a tensor's value
back on the host (``.any()``, boolean indexing, whose output shape depends on the data) takes a path with static
shapes instead, so an update runs without a host sync and compiles once per input shape."""

from __future__ import annotations

from typing import Optional

import torch


def is_xla_tensor(tensor: Optional[torch.Tensor]) -> bool:
    """True for a tensor on an XLA device (TPU, or torch-xla's CPU client)."""
    return torch.is_tensor(tensor) and tensor.device.type == "xla"


def any_padding(padding_mask: Optional[torch.Tensor]) -> bool:
    """Whether ``padding_mask`` marks any position: read from the tensor, except on XLA where a mask is kept
    whatever it holds (applying an all-False mask changes nothing, reading it would sync the host)."""
    if padding_mask is None:
        return False
    return is_xla_tensor(padding_mask) or bool(padding_mask.any())
