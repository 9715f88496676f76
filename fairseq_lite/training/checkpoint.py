"""Checkpoint files of a training run (fairseq's ``checkpoint_utils.save_checkpoint`` / ``load_checkpoint``).

File policy, as fairseq: ``checkpoint{epoch}.pt`` at the end of an epoch, ``checkpoint_{epoch}_{updates}.pt``
every ``save_interval_updates``, ``checkpoint_best.pt`` when the validation metric improves,
``checkpoint.best_{metric}_{value}.pt`` with ``keep_best_checkpoints``, and ``checkpoint_last.pt``; old
files are pruned by ``keep_interval_updates``, ``keep_last_epochs`` and ``keep_best_checkpoints``.

Every file is written to a temporary file of its own (``<name>.<pid>.<random>.tmp``), flushed, fsynced and
renamed over the old one, so a run killed in the middle of a write, or a full disk, leaves the previous
checkpoint intact. While a run trains, ``train.lock`` in ``save_dir`` names its process, so that a second
run in the same folder stops instead of overwriting the first one's checkpoints.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import random
import re
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.file_io import TEMP_NAME, atomic_copy
from fairseq_lite.interop.fairseq_checkpoint import require_checkpoint_file

logger = logging.getLogger("fairseq_lite.checkpoint")

DEFAULT_RESTORE_FILE = "checkpoint_last.pt"


#: The lock file a training holds in ``checkpoint.save_dir`` while it runs.
LOCK_NAME = "train.lock"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SaveDirLock:
    """``save_dir/train.lock``: held by one training at a time (fairseq has none, so two runs overwrite each other).

    The file holds the owner's pid, host and start time. It is created with O_EXCL and removed by
    ``release()``; a lock left behind by a process that no longer exists on this host is taken over
    with a warning. Anything else (a live pid, or another host whose processes cannot be checked) is a
    ConfigError naming the owner. Once held, the partial temporary files of killed writers are removed.
    """

    def __init__(self, save_dir: str):
        self.path = os.path.join(save_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> "SaveDirLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):  # a stale lock removed by us and re-created by a racing process: look again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me["host"])
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            self._remove_orphaned_temporaries()
            return self
        raise ConfigError(f"could not take the lock {self.path}: another training keeps re-creating it")

    def _owner(self) -> Dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            owner = None
        return owner if isinstance(owner, dict) else {"pid": None, "host": None}

    def _take_over_if_stale(self, host: str) -> None:
        """Remove a lock whose process has ended on this host (with a warning); raise for a live owner."""
        owner = self._owner()
        if not owner:
            return  # released meanwhile
        pid, owner_host = owner.get("pid"), owner.get("host")
        if owner_host == host and isinstance(pid, int) and not _pid_alive(pid):
            logger.warning("taking over the stale lock %s of process %d on %s, which no longer runs (started %s)",
                           self.path, pid, host, owner.get("started", "?"))
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            return
        who = f"process {pid} on host {owner_host}" if pid is not None else "a process that left an unreadable lock"
        started = f", started {owner['started']}" if owner.get("started") else ""
        raise ConfigError(
            f"checkpoint.save_dir {os.path.dirname(self.path)} is in use by another training ({who}{started}; lock "
            f"file {self.path}): wait for it to end or choose another checkpoint.save_dir; delete the lock file only "
            "if that training no longer runs"
        )

    def _remove_orphaned_temporaries(self) -> None:
        """Delete the partial temporary files of writers that were killed (their pid is gone): with the lock
        held, no other training writes here, and a dead writer's file is never renamed."""
        folder = os.path.dirname(self.path)
        writers = {name: int(m.group(1)) for name in os.listdir(folder) if (m := TEMP_NAME.fullmatch(name))}
        orphans = [name for name, pid in writers.items() if pid != os.getpid() and not _pid_alive(pid)]
        for name in orphans:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
        if orphans:
            logger.warning("removed %d partial checkpoint files left by killed runs in %s (e.g. %s)",
                           len(orphans), folder, orphans[0])

    def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """A checkpoint dict on the CPU, read safely (fairseq_lite's and genuine fairseq files, legacy ``args`` upgraded)."""
    from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu

    return load_checkpoint_to_cpu(path)


def _parse_overrides(text: Any) -> Dict[str, Any]:
    """``checkpoint.optimizer_overrides``: a dict literal such as ``{'lr': 1e-4}`` (literals only, never code)."""
    if isinstance(text, dict):
        return text
    try:
        value = ast.literal_eval(str(text).strip() or "{}")
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"checkpoint.optimizer_overrides must be a dict literal such as {{'lr': 1e-4}}, got {text!r}")
    return value


def checkpoint_paths(directory: str, pattern: str) -> List[str]:
    """Files in ``directory`` matching ``pattern``, sorted by its first group as a number, largest first."""
    regex = re.compile(pattern)
    found = []
    for name in os.listdir(directory):
        match = regex.fullmatch(name)
        if match:
            found.append((float(match.group(1)), os.path.join(directory, match.group(0))))
    return [path for _, path in sorted(found, reverse=True)]


def _restored(state: Tuple[bool, int]) -> str:
    return f"update {state[1]}" if state[0] else "no checkpoint"


def _check_ranks_restored_alike(trainer: Any, path: Optional[str]) -> None:
    """Every rank must resume from the same checkpoint: a rank that found another file (or none) means
    ``checkpoint.save_dir`` is not one folder shared by all nodes."""
    if trainer.world_size <= 1:
        return
    gathered = trainer.all_gather_objects((path is not None, trainer.get_num_updates()))
    for rank, theirs in enumerate(gathered):
        if tuple(theirs) != tuple(gathered[0]):
            raise CheckpointError(
                f"rank {rank} resumed from {_restored(theirs)} but rank 0 from {_restored(gathered[0])}: every rank "
                f"reads {trainer.cfg.checkpoint.save_dir}/{DEFAULT_RESTORE_FILE}, so checkpoint.save_dir must be a "
                "folder that every node sees (a shared filesystem)"
            )


def _from_rank0(names: List[str]) -> List[str]:
    """Rank 0's list of file names on every rank (FSDP: all ranks gather the state when rank 0 saves)."""
    import torch.distributed as dist

    holder = [names]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class CheckpointManager:
    """Saves and restores a run's checkpoints and tracks the best validation value (``checkpoint.*`` config)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.best: Optional[float] = None
        self.patience_best: Optional[float] = None  # every validation counts here, saved or not
        self.runs_without_improvement = 0

    def is_better(self, a: float, b: float) -> bool:
        return a >= b if self.cfg.maximize_best_checkpoint_metric else a <= b

    def should_stop_early(self, valid_loss: Optional[float]) -> bool:
        """``patience``: stop when the metric has not improved for that many validations in a row."""
        if valid_loss is None or self.cfg.patience <= 0:
            return False
        if self.patience_best is None or self.is_better(valid_loss, self.patience_best):
            self.patience_best = valid_loss
            self.runs_without_improvement = 0
            return False
        self.runs_without_improvement += 1
        if self.runs_without_improvement >= self.cfg.patience:
            logger.info(
                "early stop: %s has not improved for %d validation runs", self.cfg.best_checkpoint_metric,
                self.cfg.patience,
            )
            return True
        return False

    # -- saving ---------------------------------------------------------------------------------------

    def save(self, trainer: Any, epoch_itr: Any, val_loss: Optional[float]) -> None:
        """Write the checkpoint files this moment calls for; rank 0 writes, but under FSDP every rank
        takes part in gathering the full state."""
        cfg = self.cfg
        improved = val_loss is not None and (self.best is None or self.is_better(val_loss, self.best))
        previous_best = self.best
        if improved:
            self.best = val_loss
        gathers = getattr(trainer, "use_fsdp", False)
        if cfg.no_save or not (trainer.is_master or gathers):
            return
        start = time.perf_counter()
        epoch, updates = epoch_itr.epoch, trainer.get_num_updates()
        names = self._file_names(epoch_itr, updates, val_loss, improved, previous_best) if trainer.is_master else []
        if gathers:
            names = _from_rank0(names)
        if not names:
            return
        state = trainer.state_dict(save_optimizer_state=not cfg.no_save_optimizer_state)
        if not trainer.is_master:
            return
        state["extra_state"].update(
            train_iterator=epoch_itr.state_dict(),
            val_loss=val_loss,
            best=self.best,
            patience_best=self.patience_best,
            runs_without_improvement=self.runs_without_improvement,
        )
        paths = [os.path.join(cfg.save_dir, name) for name in names]
        trainer.save_file(state, paths[0])
        for path in paths[1:]:
            atomic_copy(paths[0], path)
        logger.info(
            "saved checkpoint %s (epoch %d @ %d updates, score %s) (writing took %.2f seconds)",
            paths[0], epoch, updates, val_loss, time.perf_counter() - start,
        )
        self._prune(epoch_itr.end_of_epoch())

    def _file_names(self, epoch_itr: Any, updates: int, val_loss: Optional[float], improved: bool,
                    previous_best: Optional[float]) -> List[str]:
        """The checkpoint files to write now (fairseq's policy), the first one written, the others copied."""
        cfg = self.cfg
        os.makedirs(cfg.save_dir, exist_ok=True)
        epoch, end_of_epoch = epoch_itr.epoch, epoch_itr.end_of_epoch()
        suffix, metric = cfg.checkpoint_suffix, cfg.best_checkpoint_metric
        names: List[str] = []
        if end_of_epoch and not cfg.no_epoch_checkpoints and epoch % cfg.save_interval == 0:
            names.append(f"checkpoint{epoch}{suffix}.pt")
        if not end_of_epoch and cfg.save_interval_updates > 0 and updates % cfg.save_interval_updates == 0:
            names.append(f"checkpoint_{epoch}_{updates}{suffix}.pt")
        if improved:
            names.append(f"checkpoint_best{suffix}.pt")
        if val_loss is not None and cfg.keep_best_checkpoints > 0:
            kept = self._best_paths()
            worst = previous_best
            if kept:
                worst_name = os.path.basename(kept[-1] if cfg.maximize_best_checkpoint_metric else kept[0])
                worst = float(re.search(r"_(-?\d+\.\d{3})\d*" + re.escape(suffix) + r"\.pt$", worst_name).group(1))
            if worst is None or self.is_better(val_loss, worst):
                tie_break = random.randint(0, cfg.keep_best_checkpoints)
                names.append(f"checkpoint.best_{metric}_{val_loss:.3f}{tie_break}{suffix}.pt")
        if not cfg.no_last_checkpoints:
            names.append(f"checkpoint_last{suffix}.pt")
        return names

    def _best_paths(self) -> List[str]:
        """The ``checkpoint.best_<metric>_<value><n>.pt`` files, largest value first."""
        metric, suffix = re.escape(self.cfg.best_checkpoint_metric), re.escape(self.cfg.checkpoint_suffix)
        return checkpoint_paths(self.cfg.save_dir, rf"checkpoint\.best_{metric}_(-?\d+\.?\d*){suffix}\.pt")

    def _prune(self, end_of_epoch: bool) -> None:
        cfg, suffix = self.cfg, re.escape(self.cfg.checkpoint_suffix)
        doomed: List[str] = []
        if not end_of_epoch and cfg.keep_interval_updates > 0:
            paths = checkpoint_paths(cfg.save_dir, rf"checkpoint_\d+_(\d+){suffix}\.pt")
            if cfg.keep_interval_updates_pattern > 0:
                pattern = cfg.keep_interval_updates_pattern
                paths = [p for p in paths if int(re.search(r"_(\d+)" + suffix + r"\.pt$", p).group(1)) % pattern != 0]
            doomed += paths[cfg.keep_interval_updates:]
        if cfg.keep_last_epochs > 0:
            doomed += checkpoint_paths(cfg.save_dir, rf"checkpoint(\d+){suffix}\.pt")[cfg.keep_last_epochs:]
        if cfg.keep_best_checkpoints > 0:
            paths = self._best_paths()
            if not cfg.maximize_best_checkpoint_metric:
                paths = paths[::-1]
            doomed += paths[cfg.keep_best_checkpoints:]
        for path in doomed:
            if os.path.lexists(path):
                os.remove(path)

    # -- loading -----------------------------------------------------------------------------------------

    def restore_path(self) -> Tuple[Optional[str], bool]:
        """The file to resume from (None: start fresh) and whether it is a ``finetune_from_model`` start."""
        cfg = self.cfg
        resets = [cfg.reset_optimizer, cfg.reset_lr_scheduler, cfg.reset_meters, cfg.reset_dataloader]
        if cfg.finetune_from_model and any(resets):
            raise ConfigError(
                "checkpoint.finetune_from_model cannot be combined with the checkpoint.reset_* flags "
                "(it resets everything itself)"
            )
        if cfg.finetune_from_model and cfg.restore_file != DEFAULT_RESTORE_FILE:
            raise ConfigError("set either checkpoint.finetune_from_model or checkpoint.restore_file, not both")
        if cfg.restore_file != DEFAULT_RESTORE_FILE:
            path = cfg.restore_file
            if cfg.checkpoint_suffix:
                path = path.replace(".pt", cfg.checkpoint_suffix + ".pt")
            require_checkpoint_file("checkpoint.restore_file", path)
            return path, False
        last = os.path.join(cfg.save_dir, f"checkpoint_last{cfg.checkpoint_suffix}.pt")
        if os.path.isfile(last):
            return last, False
        if cfg.continue_once is not None:
            return cfg.continue_once, False
        if cfg.finetune_from_model:
            require_checkpoint_file("checkpoint.finetune_from_model", cfg.finetune_from_model)
            return cfg.finetune_from_model, True
        return None, False

    def load(self, trainer: Any) -> Tuple[Dict[str, Any], Any]:
        """Restore ``trainer`` from the checkpoint the config selects; returns (extra_state, epoch iterator)."""
        cfg = self.cfg
        path, finetune = self.restore_path()
        reset_optimizer = cfg.reset_optimizer or finetune
        reset_lr_scheduler = cfg.reset_lr_scheduler or finetune
        reset_meters = cfg.reset_meters or finetune
        reset_dataloader = cfg.reset_dataloader or finetune
        extra_state: Dict[str, Any] = {}
        if path is None:
            logger.info("no existing checkpoint found in %s: training from scratch", cfg.save_dir)
        else:
            state = load_checkpoint_file(path)
            overrides = _parse_overrides(cfg.optimizer_overrides)
            if finetune:
                trainer.load_state(state, reset_optimizer=True, reset_lr_scheduler=True, reset_meters=True)
                logger.info("loaded weights from %s to fine-tune (optimizer, lr scheduler, meters and data reset)", path)
            else:
                extra_state = trainer.load_state(
                    state,
                    reset_optimizer=reset_optimizer,
                    reset_lr_scheduler=reset_lr_scheduler,
                    reset_meters=reset_meters,
                    optimizer_overrides=overrides,
                )
                logger.info("loaded checkpoint %s (epoch %s @ %d updates)",
                            path, (extra_state.get("train_iterator") or {}).get("epoch"), trainer.get_num_updates())
            if not reset_optimizer and not reset_meters and extra_state.get("best") is not None:
                self.best = extra_state["best"]
                self.patience_best = extra_state.get("patience_best")
                self.runs_without_improvement = int(extra_state.get("runs_without_improvement", 0))

        _check_ranks_restored_alike(trainer, path)
        iterator_state = extra_state.get("train_iterator")
        if iterator_state is not None and not reset_dataloader:
            epoch_itr = trainer.get_train_iterator(epoch=iterator_state["epoch"])
            epoch_itr.load_state_dict(iterator_state)
        else:
            epoch_itr = trainer.get_train_iterator(epoch=1)
        trainer.lr_step(epoch_itr.epoch)
        return extra_state, epoch_itr
