"""Dataclass ↔ config helpers: default merging, safe literal parsing, plain-dict conversion.

This is where OmegaConf is used; callers outside ``dataclass/`` and ``cli/`` see only dataclass
instances and plain Python values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import logging
import operator
import typing
from enum import Enum
from typing import Any, Iterable, Mapping, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from fairseq_lite.errors import ConfigError

logger = logging.getLogger(__name__)


def II(key: str) -> str:
    """An interpolation default, as fairseq's ``II("optimization.lr")``: the value of another config key."""
    return "${" + key + "}"


def closest_match(word: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate most similar to ``word``, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(where: str, key: str, valid: Iterable[str]) -> str:
    """One-line message for an unknown config key, with the closest valid key and the full list."""
    valid = sorted(k for k in valid if not k.startswith("_"))
    close = closest_match(key, valid)
    hint = f"did you mean '{close}'? " if close else ""
    return f"unknown key '{where}.{key}': {hint}valid keys are: {', '.join(valid)}"


def summarize_keys(keys: Iterable[str], limit: int = 12) -> str:
    """A short, sorted list of keys for a warning ("a, b, c and 40 more")."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# Safe evaluation of the Python-literal strings fairseq configs carry
# ---------------------------------------------------------------------------------------------

_BINARY_OPS = {ast.Add: operator.add, ast.Mult: operator.mul, ast.Sub: operator.sub}


def _eval_node(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, text)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_eval_node(e, text) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval_node(e, text) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand, text)
        if isinstance(value, (int, float)):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _eval_node(node.left, text), _eval_node(node.right, text)
        allowed = (
            isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (list, tuple, int, float))
        ) or (
            isinstance(node.op, ast.Mult)
            and (isinstance(left, (list, tuple, int, float)) and isinstance(right, int)
                 or isinstance(left, int) and isinstance(right, (list, tuple, int, float)))
        ) or (isinstance(node.op, ast.Sub) and all(isinstance(v, (int, float)) for v in (left, right)))
        if allowed:
            return _BINARY_OPS[type(node.op)](left, right)
    raise ConfigError(
        f"cannot parse {text!r}: only numbers, strings, lists, tuples and list '+'/'*' are allowed"
    )


def safe_eval(text: Any) -> Any:
    """Evaluate a config string such as ``"(0.9,0.98)"`` or ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``.

    fairseq calls ``eval`` on these strings (``adam_betas``, ``conv_feature_layers``, ``latent_temp``);
    this accepts the same literal expressions and nothing that could run code. Non-strings pass through.
    """
    if not isinstance(text, str):
        return text
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"cannot parse {text!r} as a Python literal: {exc.msg}") from None
    return _eval_node(tree, text)


def _bare_word(part: str) -> Any:
    """One item of a list of strings: a quoted literal (``'km'``) or the bare word itself (``km``)."""
    try:
        return safe_eval(part.strip())
    except (ConfigError, ValueError, SyntaxError):
        return part.strip()


def parse_list(text: Any, item_type: type = float) -> list:
    """A list from a config or command-line value: ``[0.1, 10]``, ``"0.1,10"``, ``"[0.1, 10]"`` or ``0.1``; a
    list of strings also takes bare words (``ltr``, ``km,ltr``, ``[km]``), as fairseq's argparse flags did."""
    if isinstance(text, str):
        stripped = text.strip()
        if item_type is str and stripped[:1] in "[(" and stripped[-1:] in "])":
            try:
                value = safe_eval(stripped)
            except (ConfigError, ValueError, SyntaxError):
                value = [_bare_word(part) for part in stripped[1:-1].split(",") if part.strip()]
        elif stripped.startswith(("[", "(")):
            value = safe_eval(stripped)
        elif stripped == "":
            value = []
        else:
            value = [_bare_word(part) if item_type is str else safe_eval(part) for part in stripped.split(",")]
    else:
        value = text
    if not isinstance(value, (list, tuple)):
        value = [value]
    if item_type is int and any(isinstance(v, float) and not v.is_integer() for v in value):
        raise ConfigError(f"expected whole numbers, got {text!r}")  # int(1.5) would silently give 1
    return [item_type(v) if item_type is not None else v for v in value]


# ---------------------------------------------------------------------------------------------
# Merging registered dataclass defaults under user values
# ---------------------------------------------------------------------------------------------


def field_names(dc_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(dc_cls)]


def _to_container(cfg: Any) -> dict:
    """A plain dict of ``cfg``'s keys (interpolations resolved where the node has a root to resolve against)."""
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if hasattr(cfg, "__dict__"):  # argparse.Namespace
        return dict(vars(cfg))
    raise ConfigError(f"expected a config mapping or dataclass, got {type(cfg).__name__}")


def _parse_sequence_literals(dc_cls: type, user: dict) -> None:
    """Turn literal strings such as ``"(2,0.5,0.999995)"`` into lists for List/Tuple-typed fields, in place.

    fairseq writes tuples as strings in yaml files and on the command line (``latent_temp``, ``vq_temp``).
    """
    hints = typing.get_type_hints(dc_cls)
    for key, value in user.items():
        if not isinstance(value, str) or not value.strip().startswith(("(", "[")) or key not in hints:
            continue
        tp = hints[key]
        if typing.get_origin(tp) is typing.Union:
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if typing.get_origin(tp) in (list, tuple):
            parsed = safe_eval(value)
            user[key] = list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]


def _nested_dataclass(tp: Any) -> Optional[type]:
    """The dataclass a field's type annotation names (``Optional[GenerationConfig]`` → GenerationConfig), or None."""
    if typing.get_origin(tp) is typing.Union:
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def drop_unknown_keys(dc_cls: type, user: dict, where: str) -> list[str]:
    """Remove, in place, the keys of ``user`` that ``dc_cls`` lacks, at every depth of its nested dataclass fields
    (``task.eval_wer_config.constraints``); returns the dotted names removed."""
    hints = typing.get_type_hints(dc_cls)
    valid = set(field_names(dc_cls))
    dropped = []
    for key in list(user):
        if key not in valid:
            dropped.append(f"{where}.{key}")
            del user[key]
            continue
        nested = _nested_dataclass(hints.get(key))
        if nested is not None and isinstance(user[key], dict):
            dropped += drop_unknown_keys(nested, user[key], f"{where}.{key}")
    return dropped


def structured_node(dc_cls: type, user_cfg: Any, *, where: str, from_checkpoint: bool = False) -> DictConfig:
    """An OmegaConf node typed by ``dc_cls``: its defaults with ``user_cfg`` merged on top.

    Mirrors fairseq's ``merge_with_parent``. A key unknown to ``dc_cls`` is a ConfigError naming the key
    and the closest valid one; when loading from a checkpoint such keys, at any depth, are dropped with one
    warning instead (fairseq's ``remove_missing`` rule for old checkpoints).
    """
    user = _to_container(user_cfg)
    if from_checkpoint:
        dropped = drop_unknown_keys(dc_cls, user, where)
        if dropped:
            logger.warning("dropping config keys unknown to fairseq_lite: %s", summarize_keys(dropped))
    else:
        valid = set(field_names(dc_cls))
        unknown = [k for k in user if k not in valid]
        if unknown:
            raise ConfigError(unknown_key_message(where, unknown[0], valid))
    _parse_sequence_literals(dc_cls, user)
    node = OmegaConf.structured(dc_cls)
    try:
        return OmegaConf.merge(node, user)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc, prefix=where)) from None


def to_dataclass(node: DictConfig, where: str = "") -> Any:
    """Resolve interpolations and turn a structured node into its dataclass instance."""
    try:
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc, prefix=where)) from None


def merge_with_defaults(dc_cls: type, user_cfg: Any, *, where: str, from_checkpoint: bool = False) -> Any:
    """A ``dc_cls`` instance: registered defaults with the user's values on top (see ``structured_node``).

    A component built on its own (``setup_task({"_name": "audio_pretraining", "data": d})``) has no whole
    config around it, so its interpolations (``${common.tpu}``) resolve against FairseqConfig's defaults.
    """
    from fairseq_lite.dataclass.configs import REGISTRY_GROUPS, FairseqConfig

    node = structured_node(dc_cls, user_cfg, where=where, from_checkpoint=from_checkpoint)
    root = OmegaConf.structured(FairseqConfig)
    OmegaConf.set_struct(root, False)
    key = where if where in REGISTRY_GROUPS else "_standalone"
    root[key] = node
    return to_dataclass(root[key], where)


def describe_omegaconf_error(exc: Exception, prefix: str = "") -> str:
    """A one-line message for an OmegaConf/Hydra error, naming the full key."""
    full_key = getattr(exc, "full_key", None)
    if prefix and full_key and not str(full_key).startswith(prefix):
        full_key = f"{prefix}.{full_key}"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MissingMandatoryValue):
        key = full_key or first_line
        return f"missing mandatory value '{key}' (??? in the config): set it, e.g. {key}=..."
    if isinstance(exc, InterpolationResolutionError):
        return f"cannot resolve an interpolation at '{full_key}': {first_line}"
    if full_key and str(full_key) not in first_line:
        return f"{full_key}: {first_line}"
    return first_line


# ---------------------------------------------------------------------------------------------
# Back to plain Python (checkpoints store ``cfg`` as a plain nested dict)
# ---------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists of ``cfg`` (dataclasses, DictConfigs, enums → strings), as fairseq saves ``cfg``."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, DictConfig):
        return config_to_dict(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)) or OmegaConf.is_list(cfg):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Enum):
        return cfg.value
    return cfg
