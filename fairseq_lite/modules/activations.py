"""Activation functions by fairseq name (``activation_fn``: relu, gelu, gelu_accurate, tanh, linear, swish ...)."""

from typing import Callable

import torch
import torch.nn.functional as F

from fairseq_lite.errors import ConfigError

ACTIVATION_CHOICES = ("relu", "relu_squared", "gelu", "gelu_fast", "gelu_accurate", "tanh", "linear", "swish")


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU computed in fp32, as fairseq's ``gelu``."""
    return F.gelu(x.float()).type_as(x)


def _gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float(), approximate="tanh").type_as(x)


def _relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).pow(2)


_ACTIVATIONS = {
    "relu": F.relu,
    "relu_squared": _relu_squared,
    "gelu": _gelu,
    "gelu_fast": _gelu_accurate,
    "gelu_accurate": _gelu_accurate,
    "tanh": torch.tanh,
    "linear": lambda x: x,
    "swish": F.silu,
}


def get_activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called ``name`` (fairseq's ``utils.get_activation_fn``)."""
    try:
        return _ACTIVATIONS[str(name)]
    except KeyError:
        raise ConfigError(f"unknown activation_fn '{name}': choose one of {', '.join(ACTIVATION_CHOICES)}") from None
