"""The training loop (fairseq_cli/train.py's ``main``, ``train``, ``validate_and_save`` and ``validate``).

``main(cfg)`` runs on every rank: build task, model and criterion, load the validation subsets, restore
from a checkpoint (``checkpoint_last.pt`` by default), then train epoch after epoch until ``max_epoch``,
``max_update``, ``stop_time_hours``, ``stop_min_lr`` or ``patience`` stops it. It returns the best
validation value (``checkpoint.best_checkpoint_metric``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from fairseq_lite.data.iterators import GroupedIterator
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.tasks import setup_task
from fairseq_lite.training.checkpoint import CheckpointManager, SaveDirLock
from fairseq_lite.training.logging import Progress, build_sinks, default_log_format
from fairseq_lite.training.trainer import Trainer

logger = logging.getLogger("fairseq_lite.train")


def _check_save_dir(cfg: Any) -> None:
    if cfg.checkpoint.no_save:
        return
    save_dir = cfg.checkpoint.save_dir
    try:
        os.makedirs(save_dir, exist_ok=True)
        probe = os.path.join(save_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"checkpoint.save_dir {save_dir} is not writable ({exc.strerror}): choose another") from None


#: XLA replicas that are threads of one process (torch-xla's CPU client, TPU v2/v3) share the global generators:
#: they seed and build their models one at a time, so each draws the weights a process of its own would
_BUILD_LOCK = threading.Lock()


def main(cfg: Any) -> Optional[float]:
    """Train with a finalised FairseqConfig; returns the best validation value (None without validation)."""
    ds = cfg.dataset
    if ds.max_tokens is None and ds.batch_size is None:
        raise ConfigError("set dataset.max_tokens or dataset.batch_size (--max-tokens / --batch-size)")
    with _BUILD_LOCK:
        seed = cfg.common.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        task = setup_task(cfg.task)
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
    if cfg.common.compile:  # in place: state-dict keys and checkpoints stay as without it
        model.compile()
        logger.info("common.compile: the model runs under torch.compile (the first updates include compiling)")
    logger.info("task: %s, model: %s, criterion: %s",
                type(task).__name__, type(model).__name__, type(criterion).__name__)
    logger.info(
        "num. model params: %d (num. trained: %d)",
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    valid_subsets = [] if ds.disable_validation else [s.strip() for s in ds.valid_subset.split(",") if s.strip()]
    for subset in valid_subsets:
        task.load_dataset(subset, combine=False, epoch=1)

    trainer = Trainer(cfg, task, model, criterion)
    lock = None
    if trainer.is_master:
        _check_save_dir(cfg)
        if not cfg.checkpoint.no_save:  # rank 0 alone writes checkpoints, so it alone holds the lock
            lock = SaveDirLock(cfg.checkpoint.save_dir).acquire()
        if cfg.common.log_file:
            handler = logging.FileHandler(cfg.common.log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
            logging.getLogger().addHandler(handler)
    try:
        return _train(cfg, trainer, task, valid_subsets)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Any, trainer: Trainer, task: Any, valid_subsets: List[str]) -> Optional[float]:
    """Restore, then train epoch after epoch until a stop condition; returns the best validation value."""
    ds = cfg.dataset
    logger.info("training on %d %s device(s), max_tokens %s, batch_size %s, update_freq %s",
                trainer.world_size, trainer.device.type, ds.max_tokens, ds.batch_size,
                list(cfg.optimization.update_freq))
    for subset in valid_subsets:  # fail now, not at the first validation, when a subset cannot be batched
        try:
            itr = trainer.get_valid_iterator(subset)
            len(itr)  # builds the batches
        except DataError as exc:
            raise DataError(f"validation split '{subset}': {exc}") from None
        require_batches(itr, task, subset, validation=True, ds=ds)
    manager = CheckpointManager(cfg.checkpoint)
    _, epoch_itr = manager.load(trainer)
    sinks = build_sinks(cfg, trainer.is_master)
    max_epoch = cfg.optimization.max_epoch or math.inf
    max_update = cfg.optimization.max_update or math.inf
    lr = trainer.get_lr()
    try:
        while epoch_itr.next_epoch_idx <= max_epoch and trainer.get_num_updates() < max_update:
            if lr <= cfg.optimization.stop_min_lr:
                logger.info("stopping: lr %g reached optimization.stop_min_lr %g", lr, cfg.optimization.stop_min_lr)
                break
            valid_losses, should_stop = train_epoch(cfg, trainer, task, epoch_itr, valid_subsets, manager, sinks)
            if should_stop:
                break
            lr = trainer.lr_step(epoch_itr.epoch, valid_losses[0])
            epoch_itr = trainer.get_train_iterator(epoch_itr.next_epoch_idx)
    finally:
        for sink in sinks:
            sink.close()
    logger.info("done training in %.1f seconds", trainer.cumulative_training_time())
    return manager.best


def require_batches(itr: Any, task: Any, split: str, validation: bool, ds: Any) -> None:
    """Raise a DataError when an epoch of ``split`` has no batch (every example filtered out), instead of
    looping over empty epochs; names the max_tokens option and the shortest example in samples."""
    if len(itr) > 0:
        return
    key = "dataset.max_tokens_valid" if validation else "dataset.max_tokens"
    max_tokens = ds.max_tokens_valid if validation else ds.max_tokens
    dataset = task.dataset(split)
    what = f"{'validation' if validation else 'training'} split '{split}'"
    if len(dataset) == 0:
        raise DataError(f"{what} has no examples: check its manifest (and task.min_sample_size)")
    indices = np.arange(len(dataset))
    if hasattr(dataset, "num_tokens_vec"):
        shortest = int(np.min(dataset.num_tokens_vec(indices)))
    else:
        shortest = min(int(dataset.num_tokens(i)) for i in indices)
    if max_tokens and shortest > max_tokens:
        raise DataError(
            f"{key}={max_tokens} is below every example of the {what} (the shortest has {shortest} samples), so "
            f"every example is filtered out and an epoch has no batch: raise {key} to at least {shortest}"
            + ("" if validation else " or crop long clips with task.max_sample_size")
        )
    raise DataError(f"the {what} yields no batch ({len(dataset)} examples, shortest {shortest} samples): "
                    f"check {key} (now {max_tokens}) and the dataset's size filters")


def train_epoch(
    cfg: Any, trainer: Trainer, task: Any, epoch_itr: Any, valid_subsets: List[str],
    manager: CheckpointManager, sinks: List[Any],
) -> Tuple[List[Optional[float]], bool]:
    """One epoch (or its remainder after a resume): update groups of ``update_freq`` micro-batches."""
    itr = epoch_itr.next_epoch_itr(
        shuffle=epoch_itr.next_epoch_idx > cfg.dataset.curriculum,
        fix_batches_to_gpus=cfg.distributed_training.fix_batches_to_gpus,
    )
    require_batches(itr, task, cfg.dataset.train_subset, validation=False, ds=cfg.dataset)
    freqs = cfg.optimization.update_freq
    update_freq = freqs[min(epoch_itr.epoch - 1, len(freqs) - 1)]
    groups = GroupedIterator(itr, update_freq)
    progress = Progress(
        groups,
        log_format=default_log_format(cfg) if trainer.is_master else "none",
        log_interval=cfg.common.log_interval,
        epoch=epoch_itr.epoch,
        sinks=sinks,
        total=len(groups),
        offset=groups.n,
    )
    trainer.begin_epoch(epoch_itr.epoch)
    log_interval = max(1, cfg.common.log_interval)
    valid_losses: List[Optional[float]] = [None]
    should_stop = False
    for samples in progress:
        if not (cfg.optimization.skip_remainder_batch and len(samples) < update_freq):
            stats = trainer.train_step(samples)
            num_updates = trainer.get_num_updates()
            if stats is not None and num_updates % log_interval == 0:
                progress.log(trainer.meter_stats("train_inner"), tag="train_inner", step=num_updates)
                trainer.meters["train_inner"].reset()
        valid_losses, should_stop = validate_and_save(
            cfg, trainer, task, epoch_itr, valid_subsets, epoch_itr.end_of_epoch(), manager, sinks
        )
        if should_stop:
            break
    progress.print(trainer.meter_stats("train"), tag="train", step=trainer.get_num_updates())
    trainer.meters["train"].reset()
    return valid_losses, should_stop


def validate_and_save(
    cfg: Any, trainer: Trainer, task: Any, epoch_itr: Any, valid_subsets: List[str], end_of_epoch: bool,
    manager: CheckpointManager, sinks: List[Any],
) -> Tuple[List[Optional[float]], bool]:
    """fairseq's stop / save / validate decisions after every update."""
    num_updates = trainer.get_num_updates()
    opt, ds, ck = cfg.optimization, cfg.dataset, cfg.checkpoint
    should_stop = False
    if opt.max_update > 0 and num_updates >= opt.max_update:
        should_stop = True
        logger.info("stopping: num_updates %d reached max_update %d", num_updates, opt.max_update)
    hours = trainer.cumulative_training_time() / 3600
    if opt.stop_time_hours > 0 and hours > opt.stop_time_hours:
        should_stop = True
        logger.info("stopping: cumulative training time %.2f h exceeds stop_time_hours %.2f", hours, opt.stop_time_hours)

    do_save = (
        (end_of_epoch and epoch_itr.epoch % ck.save_interval == 0)
        or should_stop
        or (ck.save_interval_updates > 0 and num_updates > 0 and num_updates % ck.save_interval_updates == 0
            and num_updates >= ds.validate_after_updates)
    )
    do_validate = (
        ((not end_of_epoch and do_save)
         or (end_of_epoch and epoch_itr.epoch % ds.validate_interval == 0)
         or should_stop
         or (ds.validate_interval_updates > 0 and num_updates > 0 and num_updates % ds.validate_interval_updates == 0))
        and not ds.disable_validation
        and num_updates >= ds.validate_after_updates
    )
    valid_losses: List[Optional[float]] = [None]
    if do_validate and valid_subsets:
        valid_losses = validate(cfg, trainer, epoch_itr, valid_subsets, manager, sinks)
    should_stop |= manager.should_stop_early(valid_losses[0])
    if do_save or should_stop:
        manager.save(trainer, epoch_itr, valid_losses[0])
    return valid_losses, should_stop


def validate(
    cfg: Any, trainer: Trainer, epoch_itr: Any, subsets: List[str], manager: CheckpointManager, sinks: List[Any],
) -> List[Optional[float]]:
    """Evaluate every validation subset; returns ``best_checkpoint_metric`` of each."""
    ds, metric = cfg.dataset, cfg.checkpoint.best_checkpoint_metric
    if ds.fixed_validation_seed is not None:
        torch.manual_seed(ds.fixed_validation_seed)
    losses: List[Optional[float]] = []
    for subset in subsets:
        itr = trainer.get_valid_iterator(subset).next_epoch_itr(shuffle=False, set_dataset_epoch=False)
        progress = Progress(
            itr,
            log_format=default_log_format(cfg) if trainer.is_master else "none",
            log_interval=cfg.common.log_interval,
            epoch=epoch_itr.epoch,
            prefix=f"valid on '{subset}' subset",
            sinks=sinks,
        )
        outputs = []
        for i, sample in enumerate(progress):
            if ds.max_valid_steps is not None and i >= ds.max_valid_steps:
                break
            output = trainer.valid_step(sample)
            if output is not None:
                outputs.append(output)
        stats = trainer.reduce_valid(outputs)
        if metric not in stats:
            raise ConfigError(
                f"checkpoint.best_checkpoint_metric '{metric}' is not among the validation stats "
                f"({', '.join(sorted(stats)) or 'none'}): choose one of them"
            )
        value = stats[metric]
        best = manager.best
        if best is not None:
            stats[f"best_{metric}"] = max(best, value) if cfg.checkpoint.maximize_best_checkpoint_metric else min(best, value)
        progress.print(stats, tag=subset, step=trainer.get_num_updates())
        losses.append(value)
    return losses
