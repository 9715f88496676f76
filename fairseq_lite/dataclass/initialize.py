"""From yaml files, overrides or checkpoint dicts to one resolved ``FairseqConfig`` (fairseq's ``initialize.py``).

``compose_config`` runs real Hydra composition: the ``FairseqConfig`` schema first, then the user's yaml
(fairseq's ``# @package _group_`` header included) at the root, then the overrides. ``finalize_config``
merges each registered component's dataclass defaults under its group (fairseq's ``add_defaults``),
resolves every interpolation once and returns plain dataclass instances.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fairseq_lite.dataclass.configs import REGISTRY_GROUPS, TYPED_GROUPS, FairseqConfig, check_config_values
from fairseq_lite.dataclass.inert import warn_inert_settings
from fairseq_lite.dataclass.utils import (
    closest_match,
    summarize_keys,
    describe_omegaconf_error,
    drop_unknown_keys,
    field_names,
    structured_node,
    to_dataclass,
    unknown_key_message,
)
from fairseq_lite.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEMA_NAME = "_fairseq_lite_schema"
ROOT_NAME = "_fairseq_lite_root"

#: Untyped groups: keys under them are checked against the selected component's dataclass instead.
UNTYPED_GROUPS = REGISTRY_GROUPS + ("scoring", "bpe", "tokenizer")

#: Other spellings of a model field that fairseq's docs use (spelling → field): XLS-R's README writes
#: ``model.activation_checkpoint`` for the yaml's and the dataclasses' ``checkpoint_activations``.
MODEL_KEY_ALIASES = {"activation_checkpoint": "checkpoint_activations"}

_OVERRIDE = re.compile(r"^(?P<prefix>~|\+\+|\+)?(?P<key>[^=~+][^=]*?)=(?P<value>.*)$", re.DOTALL)


def _registry(group: str):
    import fairseq_lite  # noqa: F401  (registers every component)
    from fairseq_lite.registry import REGISTRIES

    return REGISTRIES.get(group)


def typed_groups(schema: type = FairseqConfig) -> dict:
    """name → dataclass of the schema's fixed-type groups (FairseqConfig's TYPED_GROUPS; infer's adds ``decoding``)."""
    return {f.name: f.default_factory for f in dataclasses.fields(schema) if isinstance(f.default_factory, type)}


def _schema_field(path: Sequence[str], schema: type = FairseqConfig) -> Optional[dataclasses.Field]:
    """The typed-schema field that ``path`` (e.g. ["optimization", "lr"]) names, or None."""
    cls: Any = schema
    found = None
    for part in path:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        found = fields[part]
        factory = found.default_factory
        cls = factory if isinstance(factory, type) else found.type
    return found


def _is_list_field(field: dataclasses.Field) -> bool:
    return str(field.type).startswith(("List", "typing.List", "list", "Optional[List"))


def normalize_override(override: str, schema: type = FairseqConfig) -> str:
    """Rewrite one command-line override so that every spelling fairseq users type works in Hydra 1.3.

    - ``key=v``, ``+key=v`` and ``++key=v`` all set an existing key of a typed group (fairseq's README uses
      ``+optimization.update_freq='[4]'``, which fails in fairseq itself: issue #3065);
    - keys under the untyped groups (task, model, criterion, ...) may be new in the yaml: they are added,
      and checked against the selected component's dataclass when the config is finalised;
    - a key unknown to a typed group is a ConfigError naming the closest valid key;
    - ``task=audio_finetuning`` (a registered name, as fairseq's ConfigStore offers it) selects the component and
      keeps the group's other keys, before or after it on the line;
    - a value such as ``(0.9,0.98)`` (fairseq's string tuples) is quoted for Hydra's grammar;
    - ``model.activation_checkpoint`` (MODEL_KEY_ALIASES) sets ``model.checkpoint_activations``.
    """
    match = _OVERRIDE.match(override)
    if not match:
        return override
    prefix, key, value = match["prefix"] or "", match["key"], match["value"]
    if prefix == "~":
        return override
    if value.startswith("(") and not value.startswith(("'", '"')):
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    path = key.split(".")
    group = path[0]
    if group == "model" and len(path) == 2 and path[1] in MODEL_KEY_ALIASES:
        key = "model." + MODEL_KEY_ALIASES[path[1]]
    if len(path) == 1 and group in REGISTRY_GROUPS and value in _registry(group):
        return f"++{group}._name={value}"
    if len(path) == 1 or group == "hydra" or "/" in group or "@" in key:
        return f"{prefix}{key}={value}"
    if group in UNTYPED_GROUPS:
        return f"++{key}={value}"
    typed = typed_groups(schema)
    if group in typed:
        field = _schema_field(path, schema)
        if field is None:
            raise ConfigError(unknown_key_message(group, path[1], field_names(typed[group])) + f" (in override '{override}')")
        if _is_list_field(field) and len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]  # update_freq="'[4]'": a quoted list literal still means the list
        return f"{key}={value}"
    groups = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    close = closest_match(group, groups)
    hint = f"did you mean '{close}'? " if close else ""
    raise ConfigError(f"unknown config group '{group}' in override '{override}': {hint}groups are {', '.join(groups)}")


def _store_schema(config_name: Optional[str], schema: type) -> None:
    """Register the schema and a root config that puts the user's yaml at the global package."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=SCHEMA_NAME, node=schema)
    defaults: List[Any] = [SCHEMA_NAME]
    if config_name:
        defaults.append(f"{config_name}@_global_")
    defaults.append("_self_")
    cs.store(name=ROOT_NAME, node={"defaults": defaults})


def compose_config(
    config_dir: Optional[str], config_name: Optional[str], overrides: Iterable[str] = (),
    schema: type = FairseqConfig, with_hydra: bool = False,
) -> DictConfig:
    """Compose ``config_dir/config_name.yaml`` on the ``schema`` (FairseqConfig, or a subclass such as infer's
    InferConfig) with ``overrides`` (real Hydra); ``with_hydra`` keeps the ``hydra`` node (run/sweep dirs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException as OmegaError

    if config_name and config_name.endswith(".yaml"):
        config_name = config_name[: -len(".yaml")]
    config_dir = os.path.abspath(config_dir or os.getcwd())
    if config_name and not os.path.isfile(os.path.join(config_dir, config_name + ".yaml")):
        raise ConfigError(f"config '{config_name}.yaml' not found in {config_dir} (check --config-dir and --config-name)")
    # fairseq's model presets (model=wav2vec2/wav2vec2_base ...) live in the package, as in fairseq/config
    overrides = ["hydra.searchpath=[pkg://fairseq_lite.config]"] + [normalize_override(o, schema) for o in overrides]
    _store_schema(config_name, schema)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None, job_name="fairseq_lite"):
            cfg = compose(config_name=ROOT_NAME, overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaError) as exc:
        raise ConfigError(describe_hydra_error(exc, schema)) from exc
    finally:
        GlobalHydra.instance().clear()
    if "defaults" in cfg:
        raise ConfigError("the composed config has a 'defaults' key it could not apply")
    if config_name:
        restore_mandatory(cfg, os.path.join(config_dir, config_name + ".yaml"), schema, overrides)
    return cfg


def _mandatory_keys(node: Any, prefix: str = "") -> List[str]:
    """The dotted keys whose value is ``???`` in a plain yaml tree (mappings only)."""
    keys = []
    for key, value in (node.items() if isinstance(node, dict) else ()):
        if value == "???":
            keys.append(prefix + str(key))
        elif isinstance(value, dict):
            keys += _mandatory_keys(value, f"{prefix}{key}.")
    return keys


_ABSENT = object()


def _raw_value(node: Any, key: str) -> Any:
    """The unresolved value at dotted ``key`` of a DictConfig (``???`` as the string), or _ABSENT."""
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return _ABSENT
        node = node._get_node(part)
    return _ABSENT if isinstance(node, DictConfig) else node._value()


def restore_mandatory(cfg: DictConfig, yaml_path: str, schema: type, overrides: Iterable[str]) -> None:
    """Mark the yaml's ``???`` keys missing again where the schema's default replaced them.

    fairseq's OmegaConf 2.0 lets a yaml's ``???`` replace a typed group's default, so the key must be given
    (``dataset.gen_subset: ???``, ``checkpoint.save_dir: ???``); OmegaConf 2.1+ keeps the default when merging,
    which would decode the default subset or save into the default folder without a word. A key that still holds
    exactly the schema's default and that no override sets gets its ``???`` back (a value another config file
    of the defaults list sets, such as HuBERT's ``+data=iter1``, stays)."""
    import yaml

    with open(yaml_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    given = {m["key"] for m in map(_OVERRIDE.match, overrides) if m and m["prefix"] != "~"}
    defaults = OmegaConf.structured(schema)
    for key in _mandatory_keys(raw):
        default = _raw_value(defaults, key)
        if key not in given and default not in (_ABSENT, "???") and _raw_value(cfg, key) == default:
            parent_key, _, leaf = key.rpartition(".")
            OmegaConf.select(cfg, parent_key)[leaf] = "???"


def describe_hydra_error(exc: BaseException, schema: type = FairseqConfig) -> str:
    """One line for a Hydra composition error: what Hydra was doing, and the innermost reason."""
    from hydra.errors import OverrideParseException

    if isinstance(exc, OverrideParseException):
        override = exc.override.lstrip("+")
        key, _, value = override.partition("=")
        message = f"cannot parse the override {override!r} ({exc.message.splitlines()[0]})"
        if "(" in value and not value.startswith(("'", '"')):  # a Python literal such as a list of tuples
            message += f": quote it for Hydra inside the shell quotes, e.g. {key}='\"{value}\"'"
        return message
    inner, link = exc, exc
    while link is not None:  # the outermost OmegaConf error has the formatted message and the key
        if isinstance(link, OmegaConfBaseException):
            inner = link
            break
        link = link.__cause__ or link.__context__
    outer = " ".join(str(exc).split("\n")[0].split())
    if isinstance(inner, OmegaConfBaseException):
        key = str(getattr(inner, "full_key", "") or "")
        parts = key.split(".")
        typed = typed_groups(schema)
        if type(inner).__name__ == "ConfigKeyError" and len(parts) >= 2 and parts[0] in typed:
            return unknown_key_message(parts[0], parts[-1], field_names(typed[parts[0]]))
        reason = describe_omegaconf_error(inner)
        return reason if inner is exc else f"{outer}: {reason}"
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------------------------------
# add_defaults + resolution
# ---------------------------------------------------------------------------------------------


def drop_unknown_checkpoint_keys(cfg: dict, where: str = "") -> List[str]:
    """Remove, in place, what a checkpoint's ``cfg`` holds that fairseq_lite's schema lacks: unknown groups,
    unknown keys of typed groups and of each selected component at any depth, and the same inside a fine-tuned
    model's stored pretraining config (``model.w2v_args``). Returns the dotted names removed."""
    dropped = []
    known_groups = {f.name: f for f in dataclasses.fields(FairseqConfig)}
    for group in list(cfg):
        value = cfg[group]
        if group not in known_groups:
            dropped.append(where + group)
            del cfg[group]
        elif group in TYPED_GROUPS and isinstance(value, dict):
            dropped += drop_unknown_keys(known_groups[group].default_factory, value, where + group)
        elif group in REGISTRY_GROUPS and isinstance(value, dict):
            name = _registry(group).name_of(value)
            dc_cls = _registry(group).dataclasses.get(name)
            if dc_cls is not None:
                value["_name"] = name
                if "arch" not in field_names(dc_cls):
                    value.pop("arch", None)  # the legacy selector, now held by ``_name``
                dropped += drop_unknown_keys(dc_cls, value, where + group)
            if isinstance(value.get("w2v_args"), dict):
                dropped += drop_unknown_checkpoint_keys(value["w2v_args"], f"{where}{group}.w2v_args.")
    return dropped


def add_defaults(cfg: Any, from_checkpoint: bool = False) -> DictConfig:
    """The composed config as a struct DictConfig with each component group typed by its registered dataclass."""
    if isinstance(cfg, DictConfig):
        root = cfg
    else:
        plain = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
        if from_checkpoint:
            dropped = drop_unknown_checkpoint_keys(plain)
            if dropped:
                logger.warning("dropping config keys unknown to fairseq_lite: %s", summarize_keys(dropped))
        try:
            root = OmegaConf.merge(OmegaConf.structured(FairseqConfig), plain)
        except OmegaConfBaseException as exc:
            raise ConfigError(describe_hydra_error(exc)) from None
    for group in REGISTRY_GROUPS:
        node = root.get(group)
        if node is None:
            continue
        registry = _registry(group)
        if isinstance(node, str):
            user = {"_name": node}
        else:
            user = OmegaConf.to_container(node, resolve=False)
        name = registry.name_of(user)
        if from_checkpoint and name not in registry and group not in ("task", "model"):
            logger.warning("checkpoint %s '%s' is not available in fairseq_lite; ignoring it", group, name)
            with _open_struct(root):
                root[group] = None
            continue
        dc_cls = registry.get_dataclass(name)
        if dc_cls is None:
            continue
        user["_name"] = name
        user.pop("arch", None) if "arch" not in field_names(dc_cls) else None
        if group == "model":
            apply_model_key_aliases(user)
        typed = structured_node(dc_cls, user, where=group, from_checkpoint=from_checkpoint)
        with _open_struct(root):
            root[group] = typed
    return root


def apply_model_key_aliases(model: dict) -> None:
    """Rename, in place, a model config's MODEL_KEY_ALIASES spellings to the field names. Where both spellings are
    set the field name wins (an override of either spelling arrives as the field name) with one warning."""
    for alias, name in MODEL_KEY_ALIASES.items():
        if alias not in model:
            continue
        value = model.pop(alias)
        if name not in model:
            model[name] = value
        elif model[name] != value:
            logger.warning("ignoring model.%s=%s: model.%s=%s is set too (the same option)", alias, value, name,
                           model[name])


class _open_struct:
    """Temporarily lift struct mode so an Any-typed group can be replaced by a typed node."""

    def __init__(self, node: DictConfig):
        self.node = node

    def __enter__(self):
        self.flag = OmegaConf.is_struct(self.node)
        OmegaConf.set_struct(self.node, False)

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.node, self.flag)


def finalize_config(cfg: Any, from_checkpoint: bool = False) -> FairseqConfig:
    """A resolved ``FairseqConfig`` of dataclass instances from a composed config or a checkpoint's dict.

    Interpolations (``${optimization.lr}``, ``${common.tpu}``, ``${task.normalize}``) are resolved once here,
    so the resolved values are what training sees and what checkpoints store.
    """
    root = add_defaults(cfg, from_checkpoint=from_checkpoint)
    config = to_dataclass(root)
    if not from_checkpoint:  # a checkpoint's config was checked when it was trained
        check_config_values(config)
        warn_inert_settings(config)
    return config
