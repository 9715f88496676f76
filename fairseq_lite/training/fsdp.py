"""``distributed_training.ddp_backend=fully_sharded`` on torch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

fairseq wraps models in fairscale's FSDP; here each encoder layer (every child of a ``layers`` ModuleList)
is one FSDP unit and the root model another, so one layer's full parameters exist at a time. fairseq's
options keep their meaning where FSDP2 has one:

- ``no_reshard_after_forward``: keep each unit's gathered parameters from forward to backward
  (``reshard_after_forward=False``: more memory, fewer all-gathers);
- ``cpu_offload``: sharded parameters, gradients and optimizer state live on the CPU (``CPUOffloadPolicy``);
- fp16/bf16 runs keep fp32 sharded parameters and compute in half precision (``MixedPrecisionPolicy``);
  gradients are reduce-scattered in that half type, or in fp32 with ``fp32_reduce_scatter``.

layerdrop: ranks that drop different layers issue FSDP all-gathers that do not match (an error, a hang or
mixed-up parameters). Every encoder with layerdrop gets its own ``layerdrop_generator``, seeded before
each micro-batch from what all ranks share (seed, update, micro-batch index, dummy batches included), so every
rank drops the same layers in the same micro-batch and different micro-batches drop different ones.

Checkpoints hold the full, unsharded state in fairseq's layout (``model`` keyed as the plain model's
state dict, ``last_optimizer_state`` keyed by parameter index as torch optimizers write it), gathered to
rank 0's CPU: they load into a model without FSDP, into DDP, or back into FSDP on any number of ranks.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from fairseq_lite.data.data_utils import derived_seed
from fairseq_lite.errors import ConfigError

logger = logging.getLogger("fairseq_lite.fsdp")

FSDP_BACKENDS = ("fully_sharded",)


def fsdp_units(model: nn.Module) -> List[nn.Module]:
    """The modules sharded as their own FSDP unit: each encoder layer (the children of every ``layers``
    ModuleList), innermost stacks first; the root is wrapped after them."""
    units: List[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
            units.extend(module)
    return units


def _dropping(model: nn.Module) -> List[nn.Module]:
    """The modules of ``model`` with a ``layerdrop`` above 0, in ``modules()`` order (the same on every rank)."""
    return [m for m in model.modules() if float(getattr(m, "layerdrop", 0) or 0) > 0]


def check_fsdp_supported(model: nn.Module, criterion: nn.Module) -> None:
    """ConfigErrors for what this FSDP set-up cannot train correctly."""
    unshared = [m for m in _dropping(model) if not hasattr(m, "layerdrop_generator")]
    if unshared:
        raise ConfigError(
            f"distributed_training.ddp_backend=fully_sharded with layerdrop {float(unshared[0].layerdrop)} in "
            f"{type(unshared[0]).__name__}, which draws its drops from the global RNG: each rank would drop its "
            "own layers and the FSDP all-gathers would not match; set its layerdrop to 0 or use "
            "distributed_training.ddp_backend=pytorch_ddp"
        )
    if any(p.requires_grad for p in criterion.parameters()):
        raise ConfigError(
            f"distributed_training.ddp_backend=fully_sharded shards the model only, but the criterion "
            f"{type(criterion).__name__} has trained parameters: use distributed_training.ddp_backend=pytorch_ddp"
        )


def share_layerdrop(model: nn.Module) -> List[nn.Module]:
    """Give every encoder with layerdrop its own ``layerdrop_generator`` (see :func:`seed_layerdrop`);
    returns those encoders."""
    encoders = _dropping(model)
    for encoder in encoders:
        encoder.layerdrop_generator = torch.Generator()
    return encoders


def seed_layerdrop(encoders: List[nn.Module], seed: int, num_updates: int, micro_batch: int) -> None:
    """Seed the encoders' layerdrop generators for one micro-batch from values every rank shares: the run's
    seed, the update and the micro-batch's index in it (dummy batches count), never its example ids."""
    for k, encoder in enumerate(encoders):
        encoder.layerdrop_generator.manual_seed(derived_seed([seed, num_updates, micro_batch, k]))


def shard_model(model: nn.Module, dt: Any, device: torch.device, compute_dtype: Optional[torch.dtype]) -> nn.Module:
    """Apply ``fully_shard`` to every unit of :func:`fsdp_units`, then to the root (in place; returns the model)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    offload = OffloadPolicy()
    if dt.cpu_offload:
        if device.type == "cpu":
            logger.info("distributed_training.cpu_offload: the parameters already live on the CPU")
        else:
            offload = CPUOffloadPolicy()
    precision = MixedPrecisionPolicy()
    if compute_dtype is not None:
        precision = MixedPrecisionPolicy(param_dtype=compute_dtype,
                                         reduce_dtype=torch.float32 if dt.fp32_reduce_scatter else compute_dtype)
    kwargs = dict(reshard_after_forward=not dt.no_reshard_after_forward, mp_policy=precision,
                  offload_policy=offload)
    units = fsdp_units(model)
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    logger.info("fully_sharded: %d FSDP units (%d layers and the root), reshard_after_forward=%s, cpu_offload=%s",
                len(units) + 1, len(units), kwargs["reshard_after_forward"], dt.cpu_offload)
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """update_freq under FSDP (DDP's ``no_sync``): accumulate unreduced gradients until the last micro-batch."""
    model.set_requires_gradient_sync(sync)


def _options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _trained_names(model: nn.Module) -> List[str]:
    """Parameter names in the optimizer's order (the trainer hands it ``model.parameters()`` that require grad)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def full_model_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unsharded model state dict on rank 0's CPU (empty on the other ranks); a collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The unsharded optimizer state on rank 0's CPU, keyed by parameter index as a torch optimizer's
    ``state_dict()`` (fairseq's ``last_optimizer_state``); a collective. Empty on the other ranks."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not full:
        return {}
    index = {name: i for i, name in enumerate(_trained_names(model))}
    return {
        "state": {index[name]: value for name, value in full["state"].items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                         for group in full["param_groups"]],
    }


def load_full_model_state(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (every rank holds it, upgrade hooks already run) into the sharded model:
    each rank keeps its own shard of every parameter (no communication); strict about keys."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    current = model.state_dict()
    sharded = {}
    for name, value in state.items():
        like = current.get(name)
        if isinstance(like, DTensor):
            value = distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements,
                                      src_data_rank=None)
        sharded[name] = value
    nn.Module.load_state_dict(model, sharded, strict=True)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """Load an index-keyed optimizer state (as :func:`full_optimizer_state` writes, or a DDP run's) into the
    optimizer of the sharded model; every rank holds the full state. A trained parameter may have no state yet,
    as in a torch optimizer's own ``state_dict()``: one whose layer layerdrop dropped in every update so far."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _trained_names(model)
    by_name = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                         for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_options(strict=False))
