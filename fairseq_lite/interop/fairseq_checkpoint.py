"""Read genuine fairseq checkpoints safely, without fairseq installed (fairseq's ``load_checkpoint_to_cpu``).

Files are read with ``torch.load(weights_only=True)`` plus an explicit allow-list of what fairseq files
contain: ``argparse.Namespace`` (pre-Hydra ``args``), ``fairseq.data.dictionary.Dictionary`` (in the
``task_state`` of fine-tuned models; mapped onto fairseq_lite's Dictionary, which keeps fairseq's attribute
names), NumPy scalars and OmegaConf containers (turned into plain dicts). Any other pickled global is
refused with a message naming it, unless the caller passes ``trust_checkpoint=True`` (or the environment
sets ``FAIRSEQ_LITE_TRUST_CHECKPOINT=1``). Both eras are read: ``cfg`` dicts, and legacy ``args``
Namespaces, which are upgraded with fairseq's renames (reference §9.2) and converted to a ``cfg`` dict.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import pickle
import re
import typing
from typing import Any, Dict, Optional

import numpy as np
import torch

from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.dataclass.configs import REGISTRY_GROUPS, TYPED_GROUPS, FairseqConfig
from fairseq_lite.errors import CheckpointError
from fairseq_lite.interop import fairseq_pickle
from fairseq_lite.interop.fairseq_schema import restore_fairseq_lite_keys

logger = logging.getLogger(__name__)

#: Set to 1 to fully unpickle every checkpoint a command reads (w2v_path, restore_file, --path …).
TRUST_ENV = "FAIRSEQ_LITE_TRUST_CHECKPOINT"

#: Argparse attribute naming the registry entry of each component group in legacy ``args``.
LEGACY_SELECTORS = {"task": "task", "model": "arch", "criterion": "criterion", "optimizer": "optimizer",
                    "lr_scheduler": "lr_scheduler"}


def _numpy_globals() -> list:
    """NumPy scalar/dtype globals that appear in fairseq's extra_state (best metric values and the like)."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar
    allowed: list = [np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):  # files written by NumPy 2 / 1
        allowed.append((scalar, f"{module_name}.scalar"))
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "Float16DType"):
        if hasattr(np.dtypes, name):
            allowed.append(getattr(np.dtypes, name))
    return allowed


def _omegaconf_globals() -> list:
    """What a pickled OmegaConf container is made of: some fairseq files keep DictConfig/ListConfig objects
    in ``cfg`` (the "Unsupported global: omegaconf.listconfig.ListConfig" of fairseq#5610). Building these
    runs no user code; they are turned into plain containers right after loading."""
    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    return [DictConfig, ListConfig, ContainerMetadata, Metadata, nodes.AnyNode, nodes.StringNode,
            nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, typing.Any, collections.defaultdict,
            dict, list, int]


def safe_globals() -> list:
    """The allow-list for ``torch.load(weights_only=True)`` on fairseq and fairseq_lite checkpoints."""
    return [
        argparse.Namespace,
        Dictionary,
        (Dictionary, "fairseq.data.dictionary.Dictionary"),
        *_numpy_globals(),
        *_omegaconf_globals(),
    ]


def _plain(value: Any) -> Any:
    """``value`` with every OmegaConf container replaced by plain dicts/lists (interpolations resolved)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def require_checkpoint_file(key: str, path: str, what: str = "a checkpoint file",
                            example: str = "checkpoint_last.pt") -> None:
    """A CheckpointError naming the option ``key`` when ``path`` does not exist or is a directory (then saying
    it must be ``what``, e.g. the ``example`` file in it)."""
    if os.path.isdir(path):
        raise CheckpointError(f"{key} {path} is a directory; it must be {what} (e.g. {os.path.join(path, example)})")
    if not os.path.isfile(path):
        raise CheckpointError(f"{key} {path} does not exist")


def torch_load(path: str, trust_checkpoint: bool = False) -> Dict[str, Any]:
    """``torch.load`` on CPU with the allow-list; refuses any other pickled global with a clear message."""
    require_checkpoint_file("checkpoint", path)
    try:
        if trust_checkpoint or os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes"):
            state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=fairseq_pickle)
        else:
            with torch.serialization.safe_globals(safe_globals()):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|but got (<[^>]+>)", str(exc))
        if found is None:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_load_failure(exc)})") from None
        what = next(g for g in found.groups() if g)
        raise CheckpointError(
            f"{path} contains a pickled '{what}' that fairseq_lite does not load by default, since unpickling it "
            f"could run code; if you trust this file, load it with trust_checkpoint=True, infer.py --trust-checkpoint, "
            f"or {TRUST_ENV}=1 for any command"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, AttributeError, ImportError) as exc:
        # a text file, a truncated download, another framework's pickle: torch fails deep in its unpickler
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_load_failure(exc)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a fairseq checkpoint: expected a dict with a 'model' entry")
    return state


def _load_failure(exc: BaseException) -> str:
    """What went wrong in ``torch.load``, without torch's paragraph about the weights_only default."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = re.split(r"\s*Check the documentation of torch.load", text.split("WeightsUnpickler error:", 1)[1])[0]
    elif isinstance(exc, KeyError):
        text = f"unexpected data at the start of the file (KeyError {text})"
    return _first_line(exc if not text else Exception(text))


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


# ---------------------------------------------------------------------------------------------
# Legacy ``args`` → ``cfg``
# ---------------------------------------------------------------------------------------------


def upgrade_legacy_args(args: argparse.Namespace) -> argparse.Namespace:
    """fairseq's ``_upgrade_state_dict`` renames for pre-Hydra ``args`` (reference §9.2)."""
    if not hasattr(args, "task"):
        args.task = "translation"
    if getattr(args, "task", None) == "speech_pretraining":
        args.task = "audio_pretraining"
    if getattr(args, "arch", None) == "audio_cpc":
        args.arch = "wav2vec"
    if getattr(args, "criterion", None) in ("binary_cross_entropy", "kd_binary_cross_entropy"):
        args.criterion = "wav2vec"
    if hasattr(args, "remove_bpe") and not hasattr(args, "post_process"):
        args.post_process = args.remove_bpe
    if hasattr(args, "min_lr") and not hasattr(args, "stop_min_lr"):
        args.stop_min_lr = args.min_lr
    if hasattr(args, "log_keys") and args.log_keys is None:
        del args.log_keys
    if isinstance(getattr(args, "lr", None), float):
        args.lr = [args.lr]
    if isinstance(getattr(args, "data", None), list):
        args.data = args.data[0] if args.data else None
    return args


def namespace_to_config_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """A ``cfg`` dict from legacy ``args`` (fairseq's ``convert_namespace_to_omegaconf``).

    Typed groups take the attributes named like their fields; each component group gets ``_name`` from
    the selector attribute (``task``, ``arch``, ...) and every other attribute, so that its dataclass picks
    the fields it knows (unknown ones are dropped when the config is finalised from a checkpoint).
    """
    values = {k: v for k, v in vars(args).items()}
    cfg: Dict[str, Any] = {}
    factories = {f.name: f.default_factory for f in dataclasses.fields(FairseqConfig)}
    for group in TYPED_GROUPS:
        names = {f.name for f in dataclasses.fields(factories[group])}
        cfg[group] = {k: v for k, v in values.items() if k in names and k != "_name"}
    import fairseq_lite  # noqa: F401  (registers every component)
    from fairseq_lite.registry import REGISTRIES

    for group, selector in LEGACY_SELECTORS.items():
        name = values.get(selector)
        if name is None:
            continue
        registry = REGISTRIES[group]
        dc_cls = registry.dataclasses.get(name)
        known = {f.name for f in dataclasses.fields(dc_cls)} if dc_cls else set(values)
        cfg[group] = {**{k: v for k, v in values.items() if k in known}, "_name": name}
    return cfg


# ---------------------------------------------------------------------------------------------
# Overrides and the whole load
# ---------------------------------------------------------------------------------------------


def overwrite_args_by_name(cfg: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """Set every same-named key at any depth (fairseq's rule: ``{"data": d}`` sets ``task.data``)."""
    for key, value in list(cfg.items()):
        if isinstance(value, dict):
            overwrite_args_by_name(value, overrides)
        elif key in overrides:
            cfg[key] = overrides[key]


def load_checkpoint_to_cpu(
    path: str, arg_overrides: Optional[Dict[str, Any]] = None, load_on_all_ranks: bool = False,
    trust_checkpoint: bool = False,
) -> Dict[str, Any]:
    """The checkpoint dict with ``cfg`` as a plain nested dict (legacy ``args`` converted), overrides applied."""
    state = torch_load(path, trust_checkpoint=trust_checkpoint)
    args = state.get("args")
    if args is not None:
        if not isinstance(args, argparse.Namespace):
            raise CheckpointError(f"{path}: 'args' holds a {type(args).__name__}, expected an argparse Namespace")
        state["cfg"] = namespace_to_config_dict(upgrade_legacy_args(args))
        state["args"] = None
    cfg = state["cfg"] = _plain(state.get("cfg"))
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} has neither 'args' nor a 'cfg' dict: not a fairseq checkpoint")
    restore_fairseq_lite_keys(state)
    _upgrade_cfg(cfg)
    if arg_overrides:
        overwrite_args_by_name(cfg, dict(arg_overrides))
    _fill_training_state(state)
    return state


def _upgrade_cfg(cfg: Dict[str, Any]) -> None:
    """cfg-era fixes: boolean ``print_alignment`` values become "hard"/None (fairseq's upgrade)."""
    for holder in (cfg.get("generation"), (cfg.get("task") or {}).get("eval_wer_config"),
                   ((cfg.get("model") or {}).get("w2v_args") or {}).get("task", {}).get("eval_wer_config")
                   if isinstance((cfg.get("model") or {}).get("w2v_args"), dict) else None):
        if isinstance(holder, dict) and isinstance(holder.get("print_alignment"), bool):
            holder["print_alignment"] = "hard" if holder["print_alignment"] else None
    for group in REGISTRY_GROUPS:
        if isinstance(cfg.get(group), argparse.Namespace):  # legacy sub-configs kept as Namespaces
            cfg[group] = dict(vars(cfg[group]))
    model = cfg.get("model")
    if isinstance(model, dict) and isinstance(model.get("w2v_args"), argparse.Namespace):
        # fine-tuned files of the argparse era embed the pretraining args as a Namespace
        model["w2v_args"] = namespace_to_config_dict(upgrade_legacy_args(model["w2v_args"]))


def _fill_training_state(state: Dict[str, Any]) -> None:
    """Very old files lack optimizer_history / extra_state structures: add fairseq's defaults."""
    history = state.setdefault("optimizer_history", [])
    if not history:
        history.append({"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {}, "num_updates": 0})
    history[-1].setdefault("num_updates", 0)
    extra = state.setdefault("extra_state", {}) or {}
    state["extra_state"] = extra
    extra.setdefault("train_iterator", {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True})
    state.setdefault("task_state", {})
