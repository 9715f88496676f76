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
- Replicas may be threads of one process (TPU v2/v3 hosts, torch-xla's CPU client with ``CPU_NUM_DEVICES``):
  they build their models one at a time (``train._BUILD_LOCK``), take turns in ``numpy_seed``, log per thread,
  and exchange Python objects through the device (``all_gather_objects``), never through torch.distributed.

torch-xla is built against one torch release (torch-xla 2.9 needs torch 2.9) and cannot share an
environment with the main install; ``make test-xla`` builds its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
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


#: torch-xla's CPU client with several devices runs them as threads of one process, and numbers an all-reduce
#: by the compiled module: two threads compiling the same graph at once get different numbers and never meet.
#: There (``launch`` sets it) graphs are compiled and started one thread at a time, so the second finds the
#: first's compiled module, and parameter buffers are not donated (a donating run blocks until the collective
#: has met, which under the lock it never would); every scalar is data, so the replicas' graphs are the same
#: whatever values they hold. TPUs match collectives otherwise and need none of it.
_COMPILE_LOCK = threading.Lock()
_SERIAL_COMPILES = False


def mark_step() -> None:
    """Cut the lazy graph here and run it (``xm.mark_step``, called ``torch_xla.sync`` since torch-xla 2.7)."""
    _xla_model()
    import torch_xla

    with _COMPILE_LOCK if _SERIAL_COMPILES else contextlib.nullcontext():
        torch_xla.sync()


def device_scalar(value: float, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-dim float tensor on ``device`` that the graph reads as data: a Python scalar, or a 0-dim
    tensor sent to the device, becomes a constant of the graph, so replicas holding different values would
    compile different graphs."""
    return torch.tensor([float(value)]).to(device).view(())


def rank_and_world() -> Tuple[int, int]:
    """This process's replica ordinal and the number of replicas, from the XLA runtime."""
    _xla_model()
    import torch_xla.runtime as xr

    return xr.global_ordinal(), xr.world_size()


def to_host(data: Any) -> Any:
    """``data`` with every XLA tensor replaced by a CPU tensor, all fetched in one transfer (the only place the
    training loop reads device values back). What is still pending runs first, under the compile lock; the copy
    waits for it without holding the lock (a peer thread may still have to start its half of a collective)."""
    mark_step()
    return _xla_model()._maybe_convert_to_cpu(data)


def gather_over_cores(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Every replica's ``tensor`` stacked in rank order (world × its shape), by an all-reduce of the tensor placed
    at this replica's row. Not ``xm.all_gather``: on the CPU client it writes the ordinal into the graph, so each
    replica compiles its own graph and their collectives never meet."""
    rank, _ = rank_and_world()
    row = torch.zeros(world, dtype=tensor.dtype)
    row[rank] = 1
    placed = row.to(tensor.device).view(world, *[1] * tensor.dim()) * tensor.unsqueeze(0)
    _sum_over_cores([placed], world)
    return placed


def all_gather_objects(obj: Any, world: int) -> List[Any]:
    """``obj`` of every replica, in rank order: pickled bytes exchanged through the device (``xm.rendezvous``'s
    method, but with this module's locked graph runs and one graph for all replicas)."""
    import pickle

    device = xla_device()
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).int()
    sizes = to_host(gather_over_cores(torch.tensor([payload.numel()]).to(device), world)).view(-1).tolist()
    padded = torch.zeros(max(sizes), dtype=torch.int32)
    padded[: payload.numel()] = payload
    rows = to_host(gather_over_cores(padded.to(device), world)).to(torch.uint8)
    return [pickle.loads(rows[rank, :size].numpy().tobytes()) for rank, size in enumerate(sizes)]


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

    global _SERIAL_COMPILES
    if os.environ.get("PJRT_DEVICE") == "CPU" and int(os.environ.get("CPU_NUM_DEVICES", "1")) > 1:
        _SERIAL_COMPILES = True  # inherited by the forked replicas
        os.environ["XLA_ENABLE_PARAM_ALIASING"] = "0"
        os.environ["XLA_NO_SPECIAL_SCALARS"] = "1"  # a 0 or 1 that differs by replica is data, not a constant
    torch_xla.launch(_replica_main, args=(config_to_dict(cfg), main, kwargs), start_method="fork")


#: the replica a thread runs (replicas are threads of one process on torch-xla's CPU client and on TPU v2/v3)
_REPLICA = threading.local()


class _ReplicaLogFilter(logging.Filter):
    """Replica 0 logs everything, the others warnings and errors (per thread: one process may hold several)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(_REPLICA, "rank", 0) == 0


def _replica_main(index: int, cfg_dict: Dict[str, Any], main: Callable, kwargs: Dict[str, Any]) -> None:
    """One replica: rank and world size from the XLA runtime, which must hold ``distributed_world_size``."""
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.training.distributed import _setup_rank_logging

    cfg = finalize_config(cfg_dict)
    rank, world = rank_and_world()
    _setup_rank_logging(0)
    _REPLICA.rank = rank
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ReplicaLogFilter) for f in handler.filters):
            handler.addFilter(_ReplicaLogFilter())
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

    def entry(value: Any) -> torch.Tensor:
        if torch.is_tensor(value):
            return value.to(device=device, dtype=torch.float32).reshape(())
        return device_scalar(value, device)

    rows = [torch.stack([entry(o.get(k, 0.0)) for k in keys] + [entry(o.get(DUMMY_KEY, False))])
            for o in logging_outputs]
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
        matrix = gather_over_cores(matrix, world).flatten(0, 1)
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


def valid_outputs_on_host(logging_outputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """This core's validation logging outputs on the host, in one transfer, scalars as Python numbers."""
    outputs = to_host(logging_outputs)
    return [{k: v.item() if torch.is_tensor(v) and v.numel() == 1 else v for k, v in o.items()} for o in outputs]
