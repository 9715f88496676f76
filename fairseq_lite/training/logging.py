"""Progress output of training (fairseq's ``progress_bar.py``): tqdm, simple lines, json lines or none,
plus the sinks every logged line also goes to: tensorboard (``common.tensorboard_logdir``), Weights & Biases
(``common.wandb_project``, when wandb is installed) and ``<save_dir>/metrics.jsonl`` (one JSON object per
line with ``tag``, ``step``, ``epoch`` and raw numbers, for plotting).

Only rank 0 writes; other ranks get ``log_format="none"`` and no sinks.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sys
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

logger = logging.getLogger("fairseq_lite.train")

METRICS_FILE = "metrics.jsonl"


def format_stat(value: Any) -> Any:
    """Numbers as fairseq prints them: floats with 3 decimals (more for tiny values such as the lr)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.3f}"


class MetricsJsonlSink:
    """Appends ``{"tag", "step", "epoch", **stats}`` to a JSON-lines file, flushed on every line."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "a+", encoding="utf-8")
        if self.file.tell() > 0:  # a killed run may have left half a line: start on a fresh one
            self.file.seek(self.file.tell() - 1)
            if self.file.read(1) != "\n":
                self.file.write("\n")

    def write(self, stats: Mapping[str, float], tag: str, step: int, epoch: Optional[int]) -> None:
        record = {"tag": tag, "step": step, "epoch": epoch}
        record.update({k: v for k, v in stats.items() if isinstance(v, numbers.Number)})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorboardSink:
    """One SummaryWriter per tag under ``logdir/<tag>`` (fairseq's layout)."""

    def __init__(self, logdir: str):
        from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.logdir = logdir
        self.writers: Dict[str, Any] = {}

    def write(self, stats: Mapping[str, float], tag: str, step: int, epoch: Optional[int]) -> None:
        if tag not in self.writers:
            self.writers[tag] = self._writer_cls(os.path.join(self.logdir, tag))
        writer = self.writers[tag]
        for key, value in stats.items():
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                writer.add_scalar(key, value, step)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class WandbSink:
    """``wandb.log({"<tag>/<key>": value}, step=step)`` into ``wandb_project``."""

    def __init__(self, project: str, run_name: Optional[str], config: Optional[dict]):
        import wandb

        self.wandb = wandb
        wandb.init(project=project, name=run_name, config=config, resume="allow")

    def write(self, stats: Mapping[str, float], tag: str, step: int, epoch: Optional[int]) -> None:
        values = {f"{tag}/{k}": v for k, v in stats.items() if isinstance(v, numbers.Number)}
        self.wandb.log(values, step=step)

    def close(self) -> None:
        self.wandb.finish()


def build_sinks(cfg: Any, is_master: bool) -> List[Any]:
    """The sinks ``cfg`` asks for; a missing optional package (tensorboard, wandb) is a warning, not an error."""
    if not is_master:
        return []
    sinks: List[Any] = []
    if not cfg.checkpoint.no_save:
        sinks.append(MetricsJsonlSink(os.path.join(cfg.checkpoint.save_dir, METRICS_FILE)))
    if cfg.common.tensorboard_logdir:
        try:
            sinks.append(TensorboardSink(cfg.common.tensorboard_logdir))
        except ImportError:
            logger.warning("tensorboard_logdir is set but tensorboard is not installed: pip install tensorboard")
    if cfg.common.wandb_project:
        try:
            from fairseq_lite.dataclass.utils import config_to_dict

            run_name = os.environ.get("WANDB_NAME") or os.path.basename(os.path.abspath(cfg.checkpoint.save_dir))
            sinks.append(WandbSink(cfg.common.wandb_project, run_name, config_to_dict(cfg)))
        except ImportError:
            logger.warning("wandb_project is set but wandb is not installed: pip install wandb")
    return sinks


class Progress:
    """Iterates over update groups and logs stats in one of fairseq's formats (tqdm, simple, json, none)."""

    def __init__(
        self,
        iterable: Iterable,
        log_format: str,
        log_interval: int = 100,
        epoch: Optional[int] = None,
        prefix: str = "",
        sinks: Optional[List[Any]] = None,
        total: Optional[int] = None,
        offset: int = 0,
    ):
        self.iterable = iterable
        self.log_format = log_format
        self.log_interval = max(1, log_interval)
        self.epoch = epoch
        self.offset = offset
        self.total = total if total is not None else _len_or_none(iterable)
        self.prefix = f"epoch {epoch:03d}" if epoch is not None else ""
        if prefix:
            self.prefix = f"{self.prefix} | {prefix}" if self.prefix else prefix
        self.sinks = sinks or []
        self._tqdm = None
        self.i = offset

    def __iter__(self) -> Iterator:
        iterable = self.iterable
        if self.log_format == "tqdm":
            from tqdm import tqdm

            self._tqdm = tqdm(iterable, total=self.total, initial=self.offset, desc=self.prefix, leave=False,
                              file=sys.stderr, dynamic_ncols=True)
            iterable = self._tqdm
        for self.i, item in enumerate(iterable, start=self.offset + 1):
            yield item
        if self._tqdm is not None:
            self._tqdm.close()

    def log(self, stats: Mapping[str, Any], tag: str, step: int) -> None:
        """Intermediate stats (``train_inner``): every ``log_interval`` updates, to the sinks and the display."""
        for sink in self.sinks:
            sink.write(stats, tag, step, self.epoch)
        shown = {k: format_stat(v) for k, v in stats.items()}
        if self.log_format == "tqdm" and self._tqdm is not None:
            self._tqdm.set_postfix(shown, refresh=False)
        elif self.log_format == "simple":
            where = f"{self.i:5d} / {self.total}" if self.total else f"{self.i:5d}"
            logger.info("%s: %s %s", self.prefix, where, ", ".join(f"{k}={v}" for k, v in shown.items()))
        elif self.log_format == "json":
            record: Dict[str, Any] = {"epoch": self.epoch}
            if self.total:
                record["update"] = round((self.epoch or 1) - 1 + self.i / self.total, 3)
            record.update(shown)
            logger.info(json.dumps(record))

    def print(self, stats: Mapping[str, Any], tag: str, step: int) -> None:
        """End-of-epoch / validation stats: always shown (``none`` prints them too, as fairseq does)."""
        for sink in self.sinks:
            sink.write(stats, tag, step, self.epoch)
        shown = {k: format_stat(v) for k, v in stats.items()}
        if self.log_format == "json":
            record = {"epoch": self.epoch, **{f"{tag}_{k}": v for k, v in shown.items()}}
            logger.info(json.dumps(record))
        else:
            logger.info("%s | %s | %s", self.prefix, tag, " | ".join(f"{k} {v}" for k, v in shown.items()))


def default_log_format(cfg: Any) -> str:
    """``common.log_format``, or tqdm on an interactive terminal and simple lines otherwise."""
    if cfg.common.log_format is not None:
        return str(cfg.common.log_format)
    if cfg.common.no_progress_bar or not sys.stderr.isatty():
        return "simple"
    return "tqdm"


def _len_or_none(iterable: Iterable) -> Optional[int]:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
