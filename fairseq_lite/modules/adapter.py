"""MMS language adapters (fairseq HEAD's ``AdapterFast`` in ``models/wav2vec/wav2vec2.py``, ``layer_type: trf_adp``).

One bottleneck adapter per corpus (language), stacked in 3-D tensors so that choosing a language is indexing:
``W_a`` N×D×E, ``b_a`` N×D, ``W_b`` N×E×D, ``b_b`` N×E, ``ln_W``/``ln_b`` N×E (N = ``adp_num``, D = ``adp_dim``,
E = the encoder width). Adapter k maps x to ``W_b[k]·act(W_a[k]·LN_k(x) + b_a[k]) + b_b[k]``; the encoder layer
adds that to its output. One batch uses one adapter, chosen by its ``corpus_key`` (``adapter_index``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fairseq_lite.errors import ConfigError, DataError

#: fairseq's ``adp_act_fn`` choices (``nn.ReLU``, ``nn.GELU`` (exact), ``nn.SELU``).
ADAPTER_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "selu": F.selu}


class AdapterFast(nn.Module):
    """``adapter_num`` bottleneck adapters of width ``hidden_dim`` on ``input_dim`` features (fairseq's
    ``AdapterFast(adapter_num, input_dim, hidden_dim, act_fn)``; ``adp_num``, ``adp_dim``, ``adp_act_fn``).

    Initialised as fairseq does: each adapter's ``W_a``/``W_b`` Kaiming-uniform (a=√5) and biases U(±1/√fan_in),
    as ``nn.Linear``; the LayerNorms at weight 1, bias 0."""

    def __init__(self, adapter_num: int, input_dim: int, hidden_dim: int, act_fn: str = "relu"):
        super().__init__()
        if adapter_num <= 0:
            raise ConfigError(f"model.adp_num={adapter_num}: layer_type=trf_adp needs one adapter per language "
                              "(set model.adp_num to the number of languages, e.g. of task.multi_corpus_keys)")
        if str(act_fn) not in ADAPTER_ACTIVATIONS:
            raise ConfigError(f"model.adp_act_fn={act_fn!r} is not supported: choose one of "
                              f"{', '.join(ADAPTER_ACTIVATIONS)}")
        self.adapter_num, self.input_dim, self.hidden_dim = adapter_num, input_dim, hidden_dim
        self.act_fn = ADAPTER_ACTIVATIONS[str(act_fn)]
        self.W_a = nn.Parameter(torch.empty(adapter_num, hidden_dim, input_dim))
        self.W_b = nn.Parameter(torch.empty(adapter_num, input_dim, hidden_dim))
        self.b_a = nn.Parameter(torch.empty(adapter_num, hidden_dim))
        self.b_b = nn.Parameter(torch.empty(adapter_num, input_dim))
        self.ln_W = nn.Parameter(torch.empty(adapter_num, input_dim))
        self.ln_b = nn.Parameter(torch.empty(adapter_num, input_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for weight, bias in ((self.W_a, self.b_a), (self.W_b, self.b_b)):
                for k in range(self.adapter_num):
                    nn.init.kaiming_uniform_(weight[k], a=math.sqrt(5))
                    bound = 1 / math.sqrt(weight.size(2))
                    nn.init.uniform_(bias[k], -bound, bound)
            nn.init.ones_(self.ln_W)
            nn.init.zeros_(self.ln_b)

    def forward(self, x: torch.Tensor, adapter_id: int) -> torch.Tensor:
        """Adapter ``adapter_id``'s output for ``x`` (…×E); the caller adds it to ``x``."""
        k = adapter_id
        h = F.layer_norm(x, (self.input_dim,), self.ln_W[k], self.ln_b[k])
        return F.linear(self.act_fn(F.linear(h, self.W_a[k], self.b_a[k])), self.W_b[k], self.b_b[k])

    def extra_repr(self) -> str:
        return f"adapter={self.adapter_num}, input_dim={self.input_dim}, hidden_dim={self.hidden_dim}"


def parse_adapter_layers(spec: str, num_layers: int) -> List[int]:
    """The layers ``adp_trf_idx`` gives adapters: ``all``, or a Python range ``a:b`` (``a:b:step``) as fairseq's
    ``range(*map(int, spec.split(':')))``; a ConfigError names the key otherwise."""
    spec = str(spec).strip()
    if spec == "all":
        return list(range(num_layers))
    try:
        layers = list(range(*[int(part) for part in spec.split(":")]))
    except (TypeError, ValueError):
        raise ConfigError(f"model.adp_trf_idx={spec!r} is neither 'all' nor a range 'start:stop' of layer indices "
                          f"(e.g. '0:{num_layers}')") from None
    chosen = [i for i in layers if 0 <= i < num_layers]
    if not chosen:
        raise ConfigError(f"model.adp_trf_idx={spec!r} selects none of the {num_layers} encoder layers")
    return chosen


def adapter_index(corpus_key: Any, adapter_num: int) -> int:
    """The one adapter a batch uses: its ``corpus_key`` (an int, or one per sample as a list or tensor, as
    fairseq's collater gives), which must be the same for every sample and below ``adapter_num``."""
    if corpus_key is None:
        raise DataError(f"this model has language adapters (layer_type=trf_adp, adp_num={adapter_num}) but the "
                        "batch has no corpus_key: set task.multi_corpus_keys (the language of each split, e.g. "
                        "dataset.gen_subset=eng:dev) or pass corpus_key=<language index>")
    keys = _as_int_list(corpus_key)
    if len(set(keys)) != 1:
        raise DataError(f"one batch mixes corpora {sorted(set(keys))}: a batch must hold one language, as one "
                        "adapter is applied to the whole batch")
    key = keys[0]
    if not 0 <= key < adapter_num:
        raise DataError(f"corpus_key {key} is out of range for adp_num={adapter_num} adapters (0..{adapter_num - 1})")
    return key


def _as_int_list(corpus_key: Any) -> List[int]:
    if torch.is_tensor(corpus_key):
        values: Sequence[Any] = corpus_key.reshape(-1).tolist()
    elif isinstance(corpus_key, (list, tuple)):
        values = corpus_key
    else:
        values = [corpus_key]
    if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise DataError(f"corpus_key must be the language's index in task.multi_corpus_keys (an int per sample); "
                        f"got {corpus_key!r}")
    return [int(v) for v in values]


def adapter_for_layer(index: int, adapter_layers: Optional[Sequence[int]], adapter_num: int, input_dim: int,
                      hidden_dim: int, act_fn: str) -> Optional[AdapterFast]:
    """Layer ``index``'s adapter when ``adapter_layers`` includes it, else None."""
    if not adapter_layers or index not in adapter_layers:
        return None
    return AdapterFast(adapter_num, input_dim, hidden_dim, act_fn)
