"""The eval recipes (``python -m ssl.eval`` / ``asr.eval``): a trained checkpoint on the given valid splits.

The checkpoint (``model.checkpoint``: ``last``, ``best``, a file name in the checkpoint folder or a path) is
loaded with its own config; the eval recipe's dataset, loss and evaluator keys are mapped onto it with the
training mapping, and every split of ``dataset.valid_split`` runs through the trainer's validation step (the
criterion's loss; for CTC also its greedy-decoding WER and UER). The table goes to
``OUTPUT_DIR/{ssl,asr}_eval.tsv`` and to stdout.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List

from fairseq_lite.errors import ConfigError
from fairseq_lite.recipes.config_map import apply_mapping

logger = logging.getLogger("fairseq_lite.recipes")

#: the columns of each eval table (the criterion's validation stats)
COLUMNS = {"ssl.eval": ("loss", "accuracy"), "asr.eval": ("wer", "uer", "loss")}


def checkpoint_file(recipe: dict, checkpoint_dir: str) -> str:
    """The file ``model.checkpoint`` (or fairseq2's ``model.name``, when it names a file) points to."""
    model = recipe["model"]
    value = str(model["name"] if model["name"] and os.path.isfile(str(model["name"])) else model["checkpoint"])
    if value in ("last", "best"):
        path = os.path.join(checkpoint_dir, f"checkpoint_{value}.pt")
    else:
        path = value if os.path.isfile(value) else os.path.join(checkpoint_dir, value)
    if not os.path.isfile(path):
        raise ConfigError(f"model.checkpoint '{value}': {path} does not exist (train into OUTPUT_DIR first, or name "
                          "a checkpoint: last, best, a file in the checkpoint folder or a path)")
    return path


def _update(tree: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _update(tree[key], value)
        else:
            tree[key] = value


def load_for_eval(kind: str, recipe: dict, data: str, path: str):
    """(trainer, task) for ``path`` with the eval recipe's keys over the checkpoint's config."""
    from fairseq_lite.checkpoint_utils import load_model_ensemble_and_task
    from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
    from fairseq_lite.training.trainer import Trainer

    state = load_checkpoint_to_cpu(path)
    cfg = state["cfg"] if isinstance(state["cfg"], dict) else dict(state["cfg"])
    overrides: dict = {}
    apply_mapping(recipe, overrides)
    overrides.setdefault("task", {})["data"] = data
    overrides["dataset"].pop("train_subset", None)  # None in an eval recipe: the checkpoint's is kept
    for group, values in overrides.items():
        if not isinstance(cfg.get(group), dict):
            cfg[group] = {}
        _update(cfg[group], values)
    state["cfg"] = cfg
    models, fs_cfg, task = load_model_ensemble_and_task([path], state=state)
    criterion = task.build_criterion(fs_cfg.criterion)
    return Trainer(fs_cfg, task, models[0], criterion), task


def split_stats(trainer, task, split: str, seed: int) -> Dict[str, float]:
    """The criterion's validation stats over every batch of ``split``; masks and negatives (SSL) are drawn
    from ``seed`` (``common.seed``), so the same command gives the same table."""
    import torch

    torch.manual_seed(seed)
    task.load_dataset(split, combine=False, epoch=1)
    itr = trainer.get_valid_iterator(split).next_epoch_itr(shuffle=False, set_dataset_epoch=False)
    outputs = [out for out in map(trainer.valid_step, itr) if out is not None]
    return trainer.reduce_valid(outputs)


def format_table(kind: str, rows: List[Dict[str, float]]) -> str:
    columns = ("split",) + COLUMNS[kind]
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(str(row.get(c, "nan")) for c in columns))
    return "\n".join(lines) + "\n"


def evaluate(kind: str, recipe: dict, data: str, output_dir: str, checkpoint_dir: str) -> List[Dict[str, float]]:
    """Evaluate every split of ``dataset.valid_split``; writes and prints the table; returns its rows."""
    from fairseq_lite.file_io import atomic_write_bytes
    from fairseq_lite.recipes.cli import write_yaml
    from fairseq_lite.recipes.manifests import prepare_asr_data, require_split, split_names

    splits = split_names(recipe["dataset"]["valid_split"])
    if not splits:
        raise ConfigError("dataset.valid_split is empty: name the splits to evaluate, e.g. valid,test")
    if kind == "asr.eval":
        data = prepare_asr_data(data, splits, os.path.join(output_dir, "eval_data"), dict_split=None)
    for split in splits:
        require_split(data, split, "tsv", "dataset.valid_split")
    path = checkpoint_file(recipe, checkpoint_dir)
    logger.info("evaluating %s on %s", path, ", ".join(splits))
    trainer, task = load_for_eval(kind, recipe, data, path)
    rows = []
    for split in splits:
        stats = split_stats(trainer, task, split, recipe["common"]["seed"])
        rows.append({"split": split, **{c: stats[c] for c in COLUMNS[kind] if c in stats}})
    table = format_table(kind, rows)
    name = kind.replace(".", "_")
    write_yaml(recipe, os.path.join(output_dir, f"{name}_config.yaml"))
    atomic_write_bytes(table.encode("utf-8"), os.path.join(output_dir, f"{name}.tsv"))
    print(table, end="")
    return rows
