"""Training on XLA devices through torch-xla (``common.tpu=true``), fairseq's TPU path on one or many cores.

- ``distributed_training.distributed_world_size`` = 1: this process trains on its XLA device (a TPU core, or
  torch-xla's CPU device with ``PJRT_DEVICE=CPU``). More: ``torch_xla.launch`` starts one process per local
  XLA device and each takes its rank and the world size from the XLA runtime, so on a pod slice every host
  runs the same command and the world is all cores of the slice (it must equal ``distributed_world_size``).
- An update: every micro-batch and the update itself are cut into graphs (``mark_step``) that are reused while
  shapes repeat (keep them static with ``task.num_batch_buckets``, ``task.enable_padding`` and
  ``dataset.required_batch_size_multiple``); the gradients and the sample size are summed over cores on the
  device (``xm.all_reduce``, as ``xm.reduce_gradients`` does) and divided by the total sample size, as on GPUs.
- No host sync per update: the logging outputs, sample size and gradient norm of each update stay on the
  device (gathered over cores there) and are fetched in one transfer when someone reads the meters (the
  ``log_interval`` lines, epoch ends, checkpoints). As fairseq on TPU, an update whose gradient norm is
  inf/NaN is not skipped (that would need the norm on the host); the logged ``gnorm`` shows it.
- With ``common.seed_per_batch`` the device generator is seeded per micro-batch too, so N cores draw what one
  core with ``update_freq`` × N draws on the same batches.

torch-xla is built against one torch release (torch-xla 2.9 needs torch 2.9) and cannot share an
environment with the main install; ``make test-xla`` builds its own.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from fairseq_lite.errors import ConfigError

#: key marking the logging output of a dummy batch (a core out of batches): gathered, then dropped on the host
DUMMY_KEY = "_xla_dummy"


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


def rank_and_world() -> Tuple[int, int]:
    """This process's replica ordinal and the number of replicas, from the XLA runtime."""
    _xla_model()
    import torch_xla.runtime as xr

    return xr.global_ordinal(), xr.world_size()


def to_host(data: Any) -> Any:
    """``data`` with every XLA tensor replaced by a CPU tensor, all fetched in one transfer (the only place the
    training loop reads device values back)."""
    return _xla_model()._maybe_convert_to_cpu(data)


def set_device_seed(seed: int) -> None:
    """Seed the XLA device's generator (``torch.manual_seed`` does not reach it)."""
    _xla_model().set_rng_state(seed % (2**31))


# -- launching ------------------------------------------------------------------------------------------------


def call_main_xla(cfg: Any, main: Callable, **kwargs: Any) -> Any:
    """Run ``main`` on this process's XLA device, or on one process per XLA device when
    ``distributed_world_size`` > 1."""
    _xla_model()
    if cfg.distributed_training.distributed_world_size > 1:
        return launch(cfg, main, **kwargs)
    return main(cfg, **kwargs)


def launch(cfg: Any, main: Callable, **kwargs: Any) -> None:
    """``torch_xla.launch``: one forked process per local XLA device, each running ``main`` as one replica."""
    import torch_xla

    from fairseq_lite.dataclass.utils import config_to_dict

    torch_xla.launch(_replica_main, args=(config_to_dict(cfg), main, kwargs), start_method="fork")


def _replica_main(index: int, cfg_dict: Dict[str, Any], main: Callable, kwargs: Dict[str, Any]) -> None:
    """One replica: rank and world size from the XLA runtime, which must hold ``distributed_world_size``."""
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.training.distributed import _setup_rank_logging

    cfg = finalize_config(cfg_dict)
    rank, world = rank_and_world()
    _setup_rank_logging(rank)
    dt = cfg.distributed_training
    if world != dt.distributed_world_size:
        freq = [-(-f * dt.distributed_world_size // world) for f in cfg.optimization.update_freq]
        raise ConfigError(
            f"distributed_training.distributed_world_size={dt.distributed_world_size} but the XLA runtime has "
            f"{world} device(s) (pod slices: run the command on every host): set "
            f"distributed_training.distributed_world_size={world} and optimization.update_freq={freq} to keep "
            "the same effective batch"
        )
    dt.distributed_rank = rank
    main(cfg, **kwargs)


# -- one update ---------------------------------------------------------------------------------------------


def _sum_over_cores(tensors: List[torch.Tensor], world: int) -> None:
    """In-place sum over all cores (``xm.all_reduce``, what ``xm.reduce_gradients`` does, without its 1/world)."""
    if world > 1 and tensors:
        _xla_model().all_reduce("sum", tensors)


def _outputs_matrix(logging_outputs: Sequence[Dict[str, Any]], device: torch.device) -> Tuple[List[str], torch.Tensor]:
    """The logging outputs of one update as a (micro-batches × (keys + dummy flag)) float tensor on ``device``."""
    keys = [k for k in logging_outputs[0] if k != DUMMY_KEY]
    rows = [
        torch.stack([torch.as_tensor(o.get(k, 0.0), dtype=torch.float32).to(device).reshape(()) for k in keys]
                    + [torch.tensor(float(o.get(DUMMY_KEY, False)), device=device)])
        for o in logging_outputs
    ]
    return keys, torch.stack(rows)


def _matrix_outputs(keys: List[str], matrix: torch.Tensor) -> List[Dict[str, float]]:
    """The real (non-dummy) logging outputs back from a host copy of ``_outputs_matrix``."""
    return [dict(zip(keys, row[:-1].tolist())) for row in matrix if not row[-1]]


def finish_update(trainer: Any, logging_outputs: List[Dict[str, Any]], sample_size: Any, step_start: float) -> Dict:
    """Reduce, normalise, clip and apply the gradients of one update on the device; queue its statistics.

    Returns an empty dict (the statistics reach the meters at the next ``flush_stats``)."""
    import itertools
    import time

    optimizer, world, device = trainer.optimizer, trainer.world_size, trainer.device
    params = [p for p in itertools.chain(trainer.unwrapped_model.parameters(), trainer.criterion.parameters())
              if p.requires_grad]
    for p in params:  # the same gradient list on every core, whatever each one's batch left unused
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    sample_size = torch.as_tensor(sample_size, dtype=torch.float32).to(device).reshape(1)
    keys, matrix = _outputs_matrix(logging_outputs, device)
    _sum_over_cores([p.grad for p in params] + [sample_size], world)
    if world > 1:
        matrix = _xla_model().all_gather(matrix, dim=0)
    total = sample_size[0]  # a device scalar: the gradients are divided by it without reading it back
    torch._foreach_mul_([p.grad for p in params], torch.where(total > 0, 1.0 / total.clamp(min=1e-12), 0.0))
    grad_norm = optimizer.clip_grad_norm(trainer.cfg.optimization.clip_norm)
    optimizer.step()
    mark_step()
    trainer.set_num_updates(trainer.num_updates + 1)
    trainer.xla_pending.append((keys, matrix, total, grad_norm, time.perf_counter() - step_start))
    return {}


def flush_stats(trainer: Any) -> None:
    """Fetch every queued update's statistics in one transfer and add them to the trainer's meters."""
    if not trainer.xla_pending:
        return
    pending, trainer.xla_pending = trainer.xla_pending, []
    fetched = to_host([(matrix, total, norm) for _, matrix, total, norm, _ in pending])
    for (keys, _, _, _, step_time), (matrix, total, norm) in zip(pending, fetched):
        trainer._reduce_stats(_matrix_outputs(keys, matrix), float(total), float(norm), step_time)


def gather_valid_outputs(logging_outputs: List[Dict[str, Any]], world: int) -> List[Dict[str, Any]]:
    """Validation logging outputs of every core on the host (one transfer, then ``xm.mesh_reduce``)."""
    outputs = to_host(logging_outputs)
    outputs = [{k: v.item() if torch.is_tensor(v) and v.numel() == 1 else v for k, v in o.items()} for o in outputs]
    if world > 1:
        outputs = _xla_model().mesh_reduce("fairseq_lite_valid", outputs, lambda parts: [o for p in parts for o in p])
    return outputs
