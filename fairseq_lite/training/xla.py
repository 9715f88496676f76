"""Training on an XLA device through torch-xla (``common.tpu=true``), fairseq's TPU path.

One XLA device: a TPU core, or torch-xla's CPU device (``PJRT_DEVICE=CPU``) for testing. The trainer calls
``mark_step()`` after every micro-batch and after every update, so each becomes one compiled graph that is
reused as long as shapes repeat; keep shapes static on the data side with ``task.num_batch_buckets`` and
``task.enable_padding``. Checkpoints are moved to the CPU before the atomic write (what ``xm.save`` does).

torch-xla is built against one torch release (torch-xla 2.9 needs torch 2.9) and cannot share an
environment with the main install; ``make test-xla`` builds its own. Replicating over several TPU cores is
not supported: use one core and ``optimization.update_freq``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from fairseq_lite.errors import ConfigError


def _xla_model():
    try:
        import torch_xla.core.xla_model as xm
    except ImportError:
        raise ConfigError(
            "common.tpu=true needs torch-xla, which is not importable here: install torch-xla with the torch "
            "release it was built for in its own environment (e.g. pip install torch==2.9.0 torch-xla==2.9.0)"
        ) from None
    return xm


def xla_device() -> torch.device:
    """The XLA device of this process."""
    _xla_model()
    import torch_xla

    return torch.device(torch_xla.device())


def mark_step() -> None:
    """Cut the lazy graph here and run it (``xm.mark_step``, called ``torch_xla.sync`` since torch-xla 2.7)."""
    _xla_model()
    import torch_xla

    torch_xla.sync()


def call_main_xla(cfg: Any, main: Callable, **kwargs: Any) -> Any:
    """Run ``main`` on one XLA device."""
    world = cfg.distributed_training.distributed_world_size
    if world > 1:
        raise ConfigError(
            f"common.tpu=true trains on one XLA device, not distributed_world_size={world}: set "
            f"distributed_training.distributed_world_size=1 and multiply optimization.update_freq by {world}"
        )
    _xla_model()
    return main(cfg, **kwargs)
