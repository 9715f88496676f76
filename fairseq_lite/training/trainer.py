"""The trainer (fairseq's ``Trainer``): one update over ``update_freq`` micro-batches, precision, clipping,
data-parallel gradient reduction and the state a checkpoint needs.

Gradient semantics, as fairseq: the criterion returns a *summed* loss; gradients of all micro-batches and
ranks are added (the all-reduce happens on the last micro-batch only) and the sum is divided by the total
``sample_size`` over micro-batches and ranks, so the update does not depend on how a batch was split.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from fairseq_lite.data.data_utils import derived_seed
from fairseq_lite.errors import CheckpointError, ConfigError, FairseqLiteError
from fairseq_lite.optim.fp16_optimizer import (AMPOptimizer, FP16Optimizer, MemoryEfficientFP16Optimizer,
                                               build_training_optimizer)
from fairseq_lite.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq_lite.training import fsdp, host_memory
from fairseq_lite.training.meters import MetersGroup

logger = logging.getLogger("fairseq_lite.trainer")

#: ``distributed_training.ddp_backend`` values: torch's DistributedDataParallel, or fairseq's legacy one
#: (one all-reduce of all gradients after the last micro-batch, done here).
TORCH_DDP_BACKENDS = ("pytorch_ddp", "c10d")
LEGACY_DDP_BACKENDS = ("legacy_ddp", "no_c10d")
#: torch >= 2.5 has one out-of-memory error for every device; before it, CUDA's
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class _DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch DDP that forwards unknown attributes to the wrapped model (``set_num_updates``, ``get_logits`` ...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class _NonFiniteGradients(Exception):
    """The total gradient norm is inf/NaN in fp32/bf16 training: the update is skipped."""


def resolve_device(cfg: Any) -> torch.device:
    """CUDA ``device_id`` unless ``common.cpu`` or no GPU; the XLA device with ``common.tpu``."""
    if cfg.common.tpu:
        from fairseq_lite.training.xla import xla_device

        return xla_device()
    if torch.cuda.is_available() and not cfg.common.cpu:
        return torch.device("cuda", cfg.distributed_training.device_id)
    return torch.device("cpu")


def move_to(sample: Any, device: torch.device, float_dtype: Optional[torch.dtype] = None) -> Any:
    """``sample`` with every tensor on ``device``; floating tensors cast to ``float_dtype`` (fp16/bf16 runs)."""
    if torch.is_tensor(sample):
        if float_dtype is not None and sample.is_floating_point():
            return sample.to(device=device, dtype=float_dtype, non_blocking=True)
        return sample.to(device=device, non_blocking=True)
    if isinstance(sample, dict):
        return {k: move_to(v, device, float_dtype) for k, v in sample.items()}
    if isinstance(sample, list):
        return [move_to(v, device, float_dtype) for v in sample]
    if isinstance(sample, tuple):
        return tuple(move_to(v, device, float_dtype) for v in sample)
    return sample


def may_leave_parameters_unused(model: torch.nn.Module) -> bool:
    """True when some updates leave parameters without gradients: layers dropped at random (``layerdrop``)
    or an encoder frozen for the first ``freeze_finetune_updates``; torch DDP must then look for them."""
    return any(
        float(getattr(m, "layerdrop", 0) or 0) > 0 or int(getattr(m, "freeze_finetune_updates", 0) or 0) > 0
        for m in model.modules()
    )


def batch_seed(seed: int, num_updates: int, ids: Sequence[int]) -> int:
    """``common.seed_per_batch``: the torch seed of one micro-batch, from the run's seed, the update it belongs to
    and its example ids, so that its draws do not depend on the rank or on its place among ``update_freq``."""
    return derived_seed([seed, num_updates, *ids]) >> 1


def rng_state() -> Dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Holds model, criterion, optimizer and LR scheduler of one rank and performs updates."""

    def __init__(self, cfg: Any, task: Any, model: torch.nn.Module, criterion: torch.nn.Module):
        self.cfg = cfg
        self.task = task
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.device = resolve_device(cfg)
        self.xla_pending: List[Any] = []  # XLA: statistics of updates not yet fetched from the device
        if self.device.type == "xla":
            from fairseq_lite.training.xla import rank_and_world

            self.rank, self.world_size = rank_and_world()
        common = cfg.common
        if common.fp16 or common.memory_efficient_fp16:
            self.float_dtype: Optional[torch.dtype] = torch.float16
        elif common.bf16 or common.memory_efficient_bf16:
            self.float_dtype = torch.bfloat16
        else:
            self.float_dtype = None
        self.is_xla = self.device.type == "xla"
        backend = str(cfg.distributed_training.ddp_backend)
        self.use_fsdp = self.world_size > 1 and not self.is_xla and backend in fsdp.FSDP_BACKENDS
        if self.float_dtype is not None and not self.use_fsdp:  # FSDP keeps fp32 shards, computes in half
            model, criterion = model.to(self.float_dtype), criterion.to(self.float_dtype)
        self._model = model.to(self.device)
        self._criterion = criterion.to(self.device)
        supported = TORCH_DDP_BACKENDS + LEGACY_DDP_BACKENDS + fsdp.FSDP_BACKENDS
        if self.world_size > 1 and not self.is_xla and backend not in supported:
            raise ConfigError(
                f"distributed_training.ddp_backend={backend} is not supported: use pytorch_ddp, legacy_ddp or "
                "fully_sharded"
            )
        if self.use_fsdp:
            fsdp.check_fsdp_supported(self._model, self._criterion)
            fsdp.shard_model(self._model, cfg.distributed_training, self.device, self.float_dtype)
        self._layerdrop_encoders = fsdp.share_layerdrop(self._model) if self.use_fsdp else []
        self.use_torch_ddp = self.world_size > 1 and not self.is_xla and backend in TORCH_DDP_BACKENDS
        self._wrapped_model: Optional[torch.nn.Module] = None
        self._optimizer = None
        self._lr_scheduler = None
        self.num_updates = 0
        self._dummy_batch: Optional[Dict[str, Any]] = None
        self.meters = {"train": MetersGroup(), "train_inner": MetersGroup()}
        self.previous_training_time = 0.0
        self._start_time = time.time()
        self.optimizer_history: List[Dict[str, Any]] = []
        self.heap_trimmer = host_memory.HeapTrimmer()

    # -- components ------------------------------------------------------------------------------

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def model(self) -> torch.nn.Module:
        """The model used for forward passes: DDP-wrapped with ``pytorch_ddp`` on several ranks."""
        if self._wrapped_model is None:
            if self.use_torch_ddp:
                dt = self.cfg.distributed_training
                self._wrapped_model = _DistributedDataParallel(
                    self._model,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    broadcast_buffers=dt.broadcast_buffers,
                    bucket_cap_mb=dt.bucket_cap_mb,
                    find_unused_parameters=dt.find_unused_parameters or may_leave_parameters_unused(self._model),
                    gradient_as_bucket_view=dt.gradient_as_bucket_view,
                )
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self._model

    @property
    def criterion(self) -> torch.nn.Module:
        return self._criterion

    @property
    def optimizer(self):
        if self._optimizer is None:
            self._build_optimizer()
        return self._optimizer

    @property
    def lr_scheduler(self):
        if self._lr_scheduler is None:
            self._build_optimizer()
        return self._lr_scheduler

    def _build_optimizer(self) -> None:
        params = [
            p for p in itertools.chain(self._model.parameters(), self._criterion.parameters()) if p.requires_grad
        ]
        if self.is_master and self.float_dtype is torch.float16 and self.device.type == "cpu":
            logger.info("fp16 on CPU: half matmuls are slow here; common.bf16=true is the CPU choice")
        if self.use_fsdp and self.float_dtype is not None:  # the fp32 shards are the master copy
            self._optimizer = MemoryEfficientFP16Optimizer(self.cfg, params)
        else:
            self._optimizer = build_training_optimizer(self.cfg, params, self.device)
        self._lr_scheduler = LR_SCHEDULER_REGISTRY.build(self.cfg.lr_scheduler, self._optimizer)
        self._lr_scheduler.step_update(0)

    def get_lr(self) -> float:
        return self.optimizer.get_lr()

    def get_num_updates(self) -> int:
        return self.num_updates

    def set_num_updates(self, num_updates: int) -> None:
        """Set the update count everywhere it matters: LR schedule and every submodule of the model."""
        self.num_updates = num_updates
        self.lr_scheduler.step_update(num_updates)
        self._model.set_num_updates(num_updates)

    def cumulative_training_time(self) -> float:
        return self.previous_training_time + time.time() - self._start_time

    # -- epochs ------------------------------------------------------------------------------------

    def get_train_iterator(self, epoch: int, load_dataset: bool = True):
        """The epoch iterator over ``dataset.train_subset``, sharded by rank (fairseq's get_train_iterator)."""
        ds = self.cfg.dataset
        if load_dataset and ds.train_subset not in self.task.datasets:
            self.task.load_dataset(ds.train_subset, combine=True, epoch=epoch)
        return self.task.get_batch_iterator(
            dataset=self.task.dataset(ds.train_subset),
            max_tokens=ds.max_tokens,
            max_sentences=ds.batch_size,
            max_positions=self.task.max_positions(),
            ignore_invalid_inputs=True,
            required_batch_size_multiple=ds.required_batch_size_multiple,
            seed=self.cfg.common.seed,
            num_shards=self.world_size,
            shard_id=self.rank,
            num_workers=ds.num_workers,
            epoch=epoch,
        )

    def get_valid_iterator(self, subset: str):
        ds = self.cfg.dataset
        return self.task.get_batch_iterator(
            dataset=self.task.dataset(subset),
            max_tokens=ds.max_tokens_valid,
            max_sentences=ds.batch_size_valid,
            max_positions=self.task.max_positions(),
            ignore_invalid_inputs=ds.skip_invalid_size_inputs_valid_test,
            required_batch_size_multiple=ds.required_batch_size_multiple,
            seed=self.cfg.common.seed,
            num_shards=self.world_size,
            shard_id=self.rank,
            num_workers=ds.num_workers,
            epoch=1,
        )

    def begin_epoch(self, epoch: int) -> None:
        self.lr_scheduler.step_begin_epoch(epoch)
        if hasattr(self.task, "begin_epoch"):
            self.task.begin_epoch(epoch, self._model)

    def lr_step(self, epoch: int, val_loss: Optional[float] = None) -> float:
        """End of an epoch: let the scheduler see the validation loss, then re-apply the per-update lr."""
        self.lr_scheduler.step(epoch, val_loss)
        return self.lr_scheduler.step_update(self.num_updates)

    # -- one update ----------------------------------------------------------------------------------

    def _prepare_sample(self, sample: Any) -> Tuple[Dict[str, Any], bool]:
        """The sample on the device; an empty one (a rank out of batches) becomes the dummy batch, loss × 0."""
        if sample is None or len(sample) == 0:
            if self._dummy_batch is None:
                raise FairseqLiteError(
                    "this rank got an empty batch before any real one: the training set has fewer batches "
                    "than ranks; use fewer ranks or a smaller dataset.max_tokens"
                )
            return self._dummy_batch, True
        sample = move_to(sample, self.device, self.float_dtype)
        if self._dummy_batch is None:
            self._dummy_batch = sample
        return sample, False

    def _oom_error(self, exc: BaseException, validating: bool = False) -> FairseqLiteError:
        ds = self.cfg.dataset
        if validating:
            return FairseqLiteError(
                f"out of memory in validation after update {self.num_updates} ({exc.__class__.__name__}): lower "
                f"dataset.max_tokens_valid (now {ds.max_tokens_valid}) or dataset.batch_size_valid (now "
                f"{ds.batch_size_valid}); the results do not change"
            )
        return FairseqLiteError(
            f"out of memory in training update {self.num_updates + 1} ({exc.__class__.__name__}): lower "
            f"dataset.max_tokens (now {ds.max_tokens}) or dataset.batch_size (now {ds.batch_size}) and raise "
            f"optimization.update_freq (now {list(self.cfg.optimization.update_freq)}) to keep the same "
            "effective batch, or crop long inputs (task.max_sample_size)"
        )

    def train_step(self, samples: Sequence[Any], amp_retry: int = 0) -> Optional[Dict[str, float]]:
        """One update over the micro-batches in ``samples``; returns the logged stats, or None when skipped.

        An fp16 overflow skips the update (the loss scale is lowered); with ``common.amp`` the same batch is
        retried up to ``common.amp_batch_retries`` times at the lowered scale first, as fairseq does.
        """
        torch.manual_seed(self.cfg.common.seed + self.num_updates)  # fairseq: reproducible across resumes
        model, criterion, optimizer = self.model, self.criterion, self.optimizer
        model.train()
        criterion.train()
        optimizer.zero_grad()
        step_start = time.perf_counter()

        logging_outputs, sample_size, batch_ids = self._forward_backward(samples)
        if self.is_xla:
            from fairseq_lite.training.xla import finish_update

            return finish_update(self, logging_outputs, sample_size, step_start)
        if self.world_size > 1:
            if not (self.use_torch_ddp or self.use_fsdp):
                self._all_reduce_grads()
            logging_outputs, sample_size, batch_ids = self._gather_stats(logging_outputs, sample_size, batch_ids)

        try:
            # torch DDP and FSDP average gradients over ranks; the legacy all-reduce above sums them
            grad_sum_scale = self.world_size if self.use_torch_ddp or self.use_fsdp else 1
            optimizer.multiply_grads(grad_sum_scale / sample_size if sample_size > 0 else 0.0)
            grad_norm = optimizer.clip_grad_norm(self.cfg.optimization.clip_norm)
            if self.use_fsdp:  # the norm over every rank's shards, replicated
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):
                raise _NonFiniteGradients()
            optimizer.step()
            self._mark_step()
        except OUT_OF_MEMORY as exc:  # the optimizer state is allocated by the first step
            raise self._oom_error(exc) from exc
        except OverflowError as exc:
            optimizer.zero_grad()
            if isinstance(optimizer, AMPOptimizer) and amp_retry < self.cfg.common.amp_batch_retries:
                logger.info("update %d: %s; retrying the batch", self.num_updates + 1, exc)
                return self.train_step(samples, amp_retry + 1)
            logger.info("update %d skipped: %s", self.num_updates + 1, exc)
            return None
        except _NonFiniteGradients:
            shown = batch_ids[:64]
            more = f" (+{len(batch_ids) - len(shown)} more)" if len(batch_ids) > len(shown) else ""
            logger.warning(
                "update %d skipped: the loss or gradient is inf/NaN; example ids in the batch: %s%s",
                self.num_updates + 1, shown, more,
            )
            optimizer.zero_grad()
            return None

        self.set_num_updates(self.num_updates + 1)
        stats = self._reduce_stats(logging_outputs, sample_size, float(grad_norm), time.perf_counter() - step_start)
        if self.device.type == "cpu":  # batches of varying shape fragment glibc's heap (host_memory.py)
            self.heap_trimmer.after_update()
        return stats

    def _forward_backward(self, samples: Sequence[Any]) -> Tuple[List[Dict[str, Any]], float, List[int]]:
        """Forward and backward of every micro-batch (gradients accumulate; DDP syncs on the last one);
        returns their logging outputs, summed sample size and example ids (dummy batches count for nothing)."""
        logging_outputs: List[Dict[str, Any]] = []
        sample_size = 0.0
        batch_ids: List[int] = []
        for i, raw in enumerate(samples):
            sample, is_dummy = self._prepare_sample(raw)
            last = i == len(samples) - 1
            sync = self.model.no_sync() if self.use_torch_ddp and not last else contextlib.nullcontext()
            if self.use_fsdp:
                fsdp.set_gradient_sync(self._model, last)
            ids = torch.as_tensor(raw["id"]).view(-1).tolist() if "id" in raw else None  # the host copy
            if self.cfg.common.seed_per_batch and not is_dummy:
                self._seed_batch(ids)
            if self._layerdrop_encoders:  # FSDP: the same layers dropped on every rank
                fsdp.seed_layerdrop(self._layerdrop_encoders, self.cfg.common.seed, self.num_updates, i)
            try:
                with sync:
                    loss, size, logging_output = self.task.train_step(
                        sample, self.model, self.criterion, self.optimizer, self.num_updates, ignore_grad=is_dummy
                    )
            except OUT_OF_MEMORY as exc:
                raise self._oom_error(exc) from exc
            self._mark_step()
            if self.is_xla:
                # every core runs the same ops: a dummy's outputs are gathered like the others and dropped on the
                # host, its size counts × 0; the size may stay on the device
                from fairseq_lite.training.xla import DUMMY_KEY, device_scalar

                logging_outputs.append({**logging_output, DUMMY_KEY: is_dummy})
                sample_size = sample_size + size * device_scalar(not is_dummy, self.device)
            elif not is_dummy:
                logging_outputs.append(logging_output)
                sample_size = sample_size + float(size)
            if ids is not None and not is_dummy:
                batch_ids.extend(int(x) for x in ids)
        return logging_outputs, sample_size, batch_ids

    def _seed_batch(self, ids: Optional[List[int]]) -> None:
        """``common.seed_per_batch``: seed torch (and the XLA device) for the micro-batch of examples ``ids``."""
        if ids is None:
            raise FairseqLiteError("common.seed_per_batch needs batches with example ids ('id'): this task's "
                                   "batches have none; set common.seed_per_batch=false")
        seed = batch_seed(self.cfg.common.seed, self.num_updates, ids)
        torch.manual_seed(seed)
        if self.is_xla:
            from fairseq_lite.training.xla import set_device_seed

            set_device_seed(seed)

    def _mark_step(self) -> None:
        """On XLA, run the graph built so far (one graph per micro-batch and one per update)."""
        if self.is_xla:
            from fairseq_lite.training.xla import mark_step

            mark_step()

    def _all_reduce_grads(self) -> None:
        """legacy_ddp: one summed all-reduce of every gradient; a parameter unused on every rank keeps no grad."""
        params = [
            p for p in itertools.chain(self._model.parameters(), self._criterion.parameters()) if p.requires_grad
        ]
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        dist.all_reduce(has_grad)
        used = [p for p, n in zip(params, has_grad.tolist()) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for dtype in {p.grad.dtype for p in used}:
            grads = [p.grad for p in used if p.grad.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads)])

    def _gather_stats(self, logging_outputs, sample_size, batch_ids):
        gathered = self.all_gather_objects((logging_outputs, sample_size, batch_ids))
        outputs = [o for rank_outputs, _, _ in gathered for o in rank_outputs]
        total = sum(size for _, size, _ in gathered)
        ids = [i for _, _, rank_ids in gathered for i in rank_ids]
        return outputs, total, ids

    def _reduce_stats(self, logging_outputs, sample_size: float, grad_norm: float, step_time: float) -> Dict[str, float]:
        """Display stats of one update, also added to the ``train`` and ``train_inner`` meters."""
        stats = dict(self.task.reduce_metrics(logging_outputs, self._criterion)) if logging_outputs else {}
        ntokens = sum(float(o.get("ntokens", 0)) for o in logging_outputs)
        nsentences = sum(float(o.get("nsentences", 0)) for o in logging_outputs)
        clip_norm = self.cfg.optimization.clip_norm
        stats.update(
            wpb=ntokens,
            bsz=nsentences,
            gnorm=grad_norm,
            clip=100.0 if clip_norm > 0 and grad_norm > clip_norm else 0.0,
            train_wall=step_time,
        )
        if isinstance(self.optimizer, (FP16Optimizer, AMPOptimizer)) and self.optimizer.loss_scale != 1.0:
            stats["loss_scale"] = self.optimizer.loss_scale
        weights = {k: sample_size for k in stats if k.startswith(("loss", "nll_loss"))}
        for group in self.meters.values():
            group.add(stats, weights, ntokens=ntokens)
        return stats

    def meter_stats(self, group: str) -> Dict[str, float]:
        """Averages of a meters group plus ``lr``, ``num_updates`` and ``wall`` (fairseq's get_training_stats)."""
        self._flush_xla_stats()
        stats = self.meters[group].averages()
        if group == "train":  # fairseq reports the summed step time of the epoch as train_wall
            stats["train_wall"] = stats.get("train_wall", 0.0) * self.meters[group].updates
        stats["lr"] = self.get_lr()
        stats["num_updates"] = self.num_updates
        stats["wall"] = round(self.cumulative_training_time(), 0)
        return stats

    def _flush_xla_stats(self) -> None:
        """XLA: add the updates whose statistics are still on the device to the meters (one transfer)."""
        if self.is_xla:
            from fairseq_lite.training.xla import flush_stats

            flush_stats(self)

    # -- validation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def valid_step(self, sample: Any) -> Optional[Dict[str, Any]]:
        """The logging output of one validation batch; None for an empty placeholder batch (under FSDP the
        dummy batch still runs forward: every rank's forward takes part in the parameter all-gathers)."""
        if sample is None or len(sample) == 0:
            if self.use_fsdp and self._dummy_batch is not None:
                self.task.valid_step(self._dummy_batch, self.model, self.criterion)
            return None
        sample = move_to(sample, self.device, self.float_dtype)
        try:
            _, _, logging_output = self.task.valid_step(sample, self.model, self.criterion)
        except OUT_OF_MEMORY as exc:
            raise self._oom_error(exc, validating=True) from exc
        return logging_output

    def all_gather_objects(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order (``all_gather_object``; on XLA through the device)."""
        if self.world_size == 1:
            return [obj]
        if self.is_xla:
            from fairseq_lite.training.xla import all_gather_objects

            return all_gather_objects(obj, self.world_size)
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def reduce_valid(self, logging_outputs: List[Dict[str, Any]]) -> Dict[str, float]:
        """Validation stats over all batches of all ranks."""
        if self.is_xla:
            from fairseq_lite.training.xla import valid_outputs_on_host

            logging_outputs = valid_outputs_on_host(logging_outputs)
        if self.world_size > 1:
            logging_outputs = [o for rank_outputs in self.all_gather_objects(logging_outputs) for o in rank_outputs]
        if not logging_outputs:
            return {}
        stats = dict(self.task.reduce_metrics(logging_outputs, self._criterion))
        stats["wpb"] = sum(float(o.get("ntokens", 0)) for o in logging_outputs) / len(logging_outputs)
        stats["bsz"] = sum(float(o.get("nsentences", 0)) for o in logging_outputs) / len(logging_outputs)
        stats["num_updates"] = self.num_updates
        return stats

    # -- checkpoint state --------------------------------------------------------------------------------

    def state_dict(self, save_optimizer_state: bool = True) -> Dict[str, Any]:
        """fairseq's checkpoint layout, without ``cfg``/``extra_state`` (added by ``checkpoint.save_checkpoint``)."""
        from fairseq_lite.dataclass.utils import config_to_dict

        self._flush_xla_stats()
        criterion_state = self._criterion.state_dict() if any(True for _ in self._criterion.parameters()) else None
        state = {
            "args": None,
            "cfg": config_to_dict(self.cfg),
            "model": fsdp.full_model_state(self._model) if self.use_fsdp else self._model.state_dict(),
            "criterion": criterion_state,
            "optimizer_history": self.optimizer_history
            + [
                {
                    "criterion_name": type(self._criterion).__name__,
                    "optimizer_name": type(self.optimizer).__name__,
                    "lr_scheduler_state": self.lr_scheduler.state_dict(),
                    "num_updates": self.num_updates,
                }
            ],
            "task_state": self.task.state_dict(),
            "extra_state": {
                "metrics": {name: group.state_dict() for name, group in self.meters.items()},
                "previous_training_time": self.cumulative_training_time(),
                "rng_state": rng_state(),
            },
        }
        if save_optimizer_state:
            state["last_optimizer_state"] = self._optimizer_state()
        return state

    def _optimizer_state(self) -> Dict[str, Any]:
        """The optimizer's state dict; under FSDP the full one on rank 0 (a collective), the precision
        wrapper's own keys (``loss_scale`` ...) beside it."""
        wrapper_state = self.optimizer.state_dict()
        if not self.use_fsdp:
            return wrapper_state
        extras = {k: v for k, v in wrapper_state.items() if k not in ("state", "param_groups")}
        return {**fsdp.full_optimizer_state(self._model, self.optimizer.optimizer), **extras}

    def _load_optimizer_state(self, state: Dict[str, Any], overrides: Optional[Dict[str, Any]]) -> None:
        """Restore the optimizer (and loss scaler); under FSDP from the full state every rank has read."""
        if not self.use_fsdp:
            self.optimizer.load_state_dict(state, overrides)
            return
        scaler = getattr(self.optimizer, "scaler", None)
        if scaler is not None and state.get("loss_scaler") is not None:
            scaler.load_state_dict(state["loss_scaler"])
        fsdp.load_full_optimizer_state(self._model, self.optimizer.optimizer, state)
        for group in self.optimizer.param_groups:
            group.update(overrides or {})

    def _load_model_state(self, state: Dict[str, torch.Tensor]) -> None:
        if not self.use_fsdp:
            self._model.load_state_dict(state, strict=True)
            return
        self._model.upgrade_state_dict_named(state, "")
        fsdp.load_full_model_state(self._model, state)

    def save_file(self, state: Dict[str, Any], path: str) -> None:
        """Write a checkpoint (tensors moved to the CPU first, which is what ``xm.save`` does on TPU), its ``cfg``
        kept to what fairseq 0.12.2 reads (our other keys go to ``extra_state``)."""
        from fairseq_lite.interop.fairseq_schema import make_fairseq_readable
        from fairseq_lite.file_io import atomic_save

        if self.device.type != "cpu":
            state = move_to(state, torch.device("cpu"))
        atomic_save(make_fairseq_readable(state), path)

    def load_state(
        self,
        state: Dict[str, Any],
        reset_optimizer: bool = False,
        reset_lr_scheduler: bool = False,
        reset_meters: bool = False,
        optimizer_overrides: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Restore model, criterion, optimizer, scheduler, update count, meters and RNG; returns ``extra_state``."""
        history = state.get("optimizer_history") or [{}]
        last = history[-1]
        num_updates = int(last.get("num_updates", 0))
        self._model.set_num_updates(num_updates)
        try:
            self._load_model_state(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"the checkpoint's model weights do not fit this model ({str(exc).splitlines()[0]}): "
                "check that model settings match the checkpoint's"
            ) from None
        if state.get("criterion") is not None and any(True for _ in self._criterion.parameters()):
            self._criterion.load_state_dict(state["criterion"], strict=True)

        if not reset_optimizer and state.get("last_optimizer_state") is not None:
            for key, current in (("criterion_name", type(self._criterion).__name__),
                                 ("optimizer_name", type(self.optimizer).__name__)):
                if last.get(key) is not None and last[key] != current:
                    raise CheckpointError(
                        f"the checkpoint was trained with {key.split('_')[0]} {last[key]}, this run uses {current}: "
                        "set checkpoint.reset_optimizer=true to start a fresh optimizer"
                    )
            if not reset_lr_scheduler and "lr_scheduler_state" in last:
                self.lr_scheduler.load_state_dict(last["lr_scheduler_state"])
            self._load_optimizer_state(state["last_optimizer_state"], optimizer_overrides)
            self.optimizer_history = list(history)
            self.set_num_updates(num_updates)
        elif not reset_optimizer:
            self.optimizer_history = list(history)
            self.set_num_updates(num_updates)

        extra = state.get("extra_state") or {}
        if not reset_optimizer:
            self.previous_training_time = float(extra.get("previous_training_time", 0.0))
            self._start_time = time.time()
        metrics = extra.get("metrics")
        if not reset_meters and isinstance(metrics, dict):
            for name, group_state in metrics.items():
                if name in self.meters:
                    self.meters[name].load_state_dict(group_state)
        if "rng_state" in extra and not reset_optimizer:
            set_rng_state(extra["rng_state"])
        return extra
