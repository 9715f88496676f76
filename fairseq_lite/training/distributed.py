"""Data-parallel launch through torch.distributed (fairseq's ``distributed_utils.call_main``).

- Under torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR`` in the environment) every
  process joins the group from the environment (``env://``).
- Otherwise ``distributed_training.distributed_world_size`` > 1 spawns that many processes on this node,
  one per GPU with NCCL, or gloo processes on the CPU when ``common.cpu=true``.
- ``common.tpu=true`` hands over to ``fairseq_lite.training.xla``.

Asking for more ranks than devices is an error that says how to keep the effective batch with
``optimization.update_freq`` (the wav2vec yamls ask for 64 or 128 GPUs).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import sys
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from fairseq_lite.errors import ConfigError, FairseqLiteError

logger = logging.getLogger("fairseq_lite.distributed")

_LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def _torchrun_world_size() -> Optional[int]:
    """WORLD_SIZE when launched by torchrun (or any launcher that sets the env:// variables)."""
    if all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")):
        return int(os.environ["WORLD_SIZE"])
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _uses_cuda(cfg: Any) -> bool:
    return torch.cuda.is_available() and not cfg.common.cpu


def check_world_size(cfg: Any) -> None:
    """Raise a ConfigError when this node cannot hold ``distributed_world_size`` ranks."""
    world = cfg.distributed_training.distributed_world_size
    devices = torch.cuda.device_count() if _uses_cuda(cfg) else 0
    if _uses_cuda(cfg) and world <= devices:
        return
    if not _uses_cuda(cfg) and cfg.common.cpu:
        return  # gloo processes on the CPU, as many as asked
    have = max(devices, 1)
    freq = list(cfg.optimization.update_freq)
    suggested = [math.ceil(f * world / have) for f in freq]
    where = f"{devices} CUDA device(s) are present" if devices else "no CUDA device is present"
    extra = "" if devices else f", or common.cpu=true to run {world} gloo processes on the CPU"
    raise ConfigError(
        f"distributed_training.distributed_world_size={world} but {where}: set "
        f"distributed_training.distributed_world_size={have} and optimization.update_freq={suggested} "
        f"to keep the same effective batch{extra}"
    )


def _setup_rank_logging(rank: int) -> None:
    """Rank 0 logs everything; the other ranks log warnings and errors, and their one "initialized rank" line."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format=_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stdout)
    logging.getLogger().setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.setLevel(logging.INFO)


def _run_rank(cfg: Any, main: Callable, rank: int, world: int, init_method: str, kwargs: dict) -> Any:
    """Join the process group as ``rank``, run ``main(cfg)``, leave the group."""
    dt = cfg.distributed_training
    dt.distributed_rank = rank
    dt.distributed_world_size = world
    if _uses_cuda(cfg):
        torch.cuda.set_device(dt.device_id)
        backend = dt.distributed_backend or "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method=init_method, world_size=world, rank=rank)
    logger.info("initialized rank %d of %d (%s, %s)", rank, world, backend, init_method)
    try:
        result = main(cfg, **kwargs)
        # every rank leaves together, and the trainer's DDP/FSDP objects (which hold the group) are freed first:
        # a gloo group torn down while a peer is still talking to it, or at interpreter exit, aborts the process
        dist.barrier()
        gc.collect()
        return result
    finally:
        dist.destroy_process_group()


def _cpu_threads_per_rank(nprocs: int) -> int:
    """Intra-op threads for each of ``nprocs`` CPU ranks on this node: the cores shared out (torchrun sets
    OMP_NUM_THREADS=1 for the same reason), so that the ranks do not each start a thread per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nprocs)


def _spawned_rank(local_rank: int, cfg_dict: dict, main: Callable, init_method: str, world: int, start_rank: int,
                  kwargs: dict, cpu_threads: Optional[int], user_errors: Any) -> None:
    """One spawned rank; a FairseqLiteError it meets goes to ``user_errors`` for the parent to raise as is."""
    from fairseq_lite.dataclass.initialize import finalize_config

    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    _setup_rank_logging(start_rank + local_rank)
    try:
        cfg = finalize_config(cfg_dict)
        cfg.distributed_training.device_id = local_rank
        _run_rank(cfg, main, start_rank + local_rank, world, init_method, kwargs)
    except FairseqLiteError as exc:
        user_errors.put(exc)
        raise


def call_main(cfg: Any, main: Callable, **kwargs: Any) -> Any:
    """Run ``main(cfg, **kwargs)`` on one process, under torchrun, spawned on this node, or on TPU."""
    dt = cfg.distributed_training
    if cfg.common.tpu:
        from fairseq_lite.training.xla import call_main_xla

        return call_main_xla(cfg, main, **kwargs)
    env_world = _torchrun_world_size()
    if env_world is not None:
        dt.device_id = int(os.environ.get("LOCAL_RANK", dt.device_id))
        if env_world == 1:
            return main(cfg, **kwargs)
        _setup_rank_logging(int(os.environ["RANK"]))
        return _run_rank(cfg, main, int(os.environ["RANK"]), env_world, "env://", kwargs)

    world = dt.distributed_world_size
    if world <= 1:
        return main(cfg, **kwargs)
    if dt.distributed_init_method is None:  # single node: the ranks must fit on its devices
        check_world_size(cfg)
        port = dt.distributed_port if dt.distributed_port > 0 else _free_port()
        init_method = f"tcp://localhost:{port}"
    else:
        init_method = dt.distributed_init_method
    if dt.distributed_no_spawn:  # one process per node started by the user, rank given in the config
        return _run_rank(cfg, main, dt.distributed_rank, world, init_method, kwargs)
    from fairseq_lite.dataclass.utils import config_to_dict

    cuda = _uses_cuda(cfg)
    nprocs = min(world, torch.cuda.device_count()) if cuda else world
    # CUDA cannot be used in forked children; CPU ranks are forked, which saves re-importing torch in each
    start_method = "spawn" if cuda else "fork"
    # forked CPU ranks share the cores unless OMP_NUM_THREADS says otherwise
    cpu_threads = None if cuda or "OMP_NUM_THREADS" in os.environ else _cpu_threads_per_rank(nprocs)
    logger.info("starting %d training processes (%s, %s%s)", nprocs, start_method, init_method,
                f", {cpu_threads} thread(s) each" if cpu_threads else "")
    user_errors = torch.multiprocessing.get_context(start_method).SimpleQueue()
    # torch warns as it terminates the other ranks after one failed; the failure itself is raised below
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    spawn_level = spawn_logger.level
    spawn_logger.setLevel(logging.ERROR)
    try:
        torch.multiprocessing.start_processes(
            _spawned_rank,
            args=(config_to_dict(cfg), main, init_method, world, dt.distributed_rank or 0, kwargs, cpu_threads,
                  user_errors),
            nprocs=nprocs,
            join=True,
            start_method=start_method,
        )
    except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException):
        if user_errors.empty():
            raise
        raise user_errors.get() from None  # a rank's one-line error, not its traceback wrapped in torch's
    finally:
        spawn_logger.setLevel(spawn_level)
    return None
