"""One registry class for tasks, models, criteria, optimizers and LR schedulers (fairseq's ``registry.py``).

A component registers under a name with the dataclass that configures it::

    @MODEL_REGISTRY.register("wav2vec2", dataclass=Wav2Vec2Config)
    class Wav2Vec2Model(BaseFairseqModel): ...

and is built from a DictConfig/dict/dataclass carrying ``_name``, from a plain name, or from a legacy
argparse Namespace. The registered dataclass defaults are merged under the user's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

from fairseq_lite.dataclass.configs import FairseqDataclass
from fairseq_lite.dataclass.utils import closest_match, merge_with_defaults
from fairseq_lite.errors import ConfigError

#: Every registry by kind ("task", "model", ...), as fairseq's ``REGISTRIES`` table.
REGISTRIES: Dict[str, "Registry"] = {}


class Registry:
    """Name → (class, config dataclass) for one kind of component."""

    def __init__(self, kind: str, base_class: Optional[type] = None, default: Optional[str] = None):
        if kind in REGISTRIES:
            raise ValueError(f"a registry for '{kind}' already exists")
        self.kind = kind
        self.base_class = base_class
        self.default = default
        self.classes: Dict[str, type] = {}
        self.dataclasses: Dict[str, type] = {}
        REGISTRIES[kind] = self

    # -- registration --------------------------------------------------------------------------

    def register(self, name: str, dataclass: Optional[type] = None) -> Callable[[type], type]:
        """Class decorator registering ``cls`` under ``name`` with its config ``dataclass``."""

        def decorator(cls: type) -> type:
            if name in self.classes:
                raise ValueError(f"cannot register duplicate {self.kind} '{name}'")
            if cls.__name__ in {c.__name__ for c in self.classes.values()}:
                raise ValueError(f"cannot register {self.kind} with duplicate class name {cls.__name__}")
            if self.base_class is not None and not issubclass(cls, self.base_class):
                raise ValueError(f"{self.kind} {cls.__name__} must extend {self.base_class.__name__}")
            if dataclass is not None and not issubclass(dataclass, FairseqDataclass):
                raise ValueError(f"config of {self.kind} '{name}' must extend FairseqDataclass")
            self.classes[name] = cls
            if dataclass is not None:
                self.dataclasses[name] = dataclass
            return cls

        return decorator

    def register_architecture(self, name: str, of: str, dataclass: type) -> None:
        """fairseq's ``register_model_architecture``: ``name`` builds the class registered as ``of``, configured
        by ``dataclass`` (the same fields with the architecture's defaults)."""
        if name in self.classes:
            raise ValueError(f"cannot register duplicate {self.kind} '{name}'")
        if of not in self.classes:
            raise ValueError(f"architecture '{name}' of an unregistered {self.kind} '{of}'")
        if not issubclass(dataclass, self.dataclasses.get(of, FairseqDataclass)):
            raise ValueError(f"config of architecture '{name}' must extend the config of '{of}'")
        self.classes[name] = self.classes[of]
        self.dataclasses[name] = dataclass

    # -- lookup ----------------------------------------------------------------------------------

    @property
    def choices(self) -> list[str]:
        return sorted(self.classes)

    def __contains__(self, name: str) -> bool:
        return name in self.classes

    def get_class(self, name: str) -> type:
        if name not in self.classes:
            raise ConfigError(self._unknown_name_message(name))
        return self.classes[name]

    def get_dataclass(self, name: str) -> Optional[type]:
        self.get_class(name)
        return self.dataclasses.get(name)

    def _unknown_name_message(self, name: Any) -> str:
        if not self.classes:
            return f"unknown {self.kind} '{name}': no {self.kind} is registered yet"
        close = closest_match(str(name), self.classes)
        hint = f"did you mean '{close}'? " if close else ""
        return f"unknown {self.kind} '{name}': {hint}choose one of {', '.join(self.choices)}"

    # -- building --------------------------------------------------------------------------------

    def name_of(self, cfg: Any) -> str:
        """The registered name ``cfg`` selects: a string, ``cfg._name``, or the Namespace attribute."""
        if cfg is None:
            name = self.default
        elif isinstance(cfg, str):
            name = cfg
        elif isinstance(cfg, argparse.Namespace):  # legacy checkpoints and the legacy CLI
            name = getattr(cfg, self.kind, None) or getattr(cfg, "_name", None)
            if name is None and self.kind == "model":
                name = getattr(cfg, "arch", None)
        elif dataclasses.is_dataclass(cfg):
            name = getattr(cfg, "_name", None)
        elif isinstance(cfg, Mapping):  # dict or DictConfig
            name = cfg.get("_name")
            if name is None and self.kind == "model":
                name = cfg.get("arch")
        else:
            raise ConfigError(f"cannot select a {self.kind} from a {type(cfg).__name__}")
        if name is None:
            choices = ", ".join(self.choices) or f"no {self.kind} is registered yet"
            raise ConfigError(f"no {self.kind} selected: set {self.kind}._name ({choices})")
        return str(name)

    def build_config(self, cfg: Any, from_checkpoint: bool = False) -> Any:
        """The component's config: its dataclass defaults with ``cfg``'s values merged on top.

        A string selects the defaults. A key unknown to the dataclass is a ConfigError naming the key
        and the closest valid one, except with ``from_checkpoint=True`` where it is dropped with one
        warning (old checkpoints carry keys that no longer exist).
        """
        name = self.name_of(cfg)
        dc_cls = self.get_dataclass(name)
        if dc_cls is None:
            return cfg
        if isinstance(cfg, dc_cls):
            return cfg
        user = None if isinstance(cfg, str) else cfg
        if isinstance(user, argparse.Namespace):  # fairseq's from_namespace: copy same-named attributes
            user = {k: v for k, v in vars(user).items() if k in {f.name for f in dataclasses.fields(dc_cls)}}
        config = merge_with_defaults(dc_cls, user, where=self.kind, from_checkpoint=from_checkpoint)
        config._name = name
        return config

    def build(self, cfg: Any, *args: Any, from_checkpoint: bool = False, **kwargs: Any) -> Any:
        """Build the component ``cfg`` selects: ``cls.build_<kind>(config, ...)`` if defined, else ``cls(config, ...)``."""
        config = self.build_config(cfg, from_checkpoint=from_checkpoint)
        cls = self.get_class(self.name_of(cfg))
        builder = getattr(cls, f"build_{self.kind}", None)
        if builder is not None and inspect.ismethod(builder):
            return builder(config, *args, **kwargs)
        return cls(config, *args, **kwargs)


def import_all_modules(package_name: str, package_dir: str) -> None:
    """Import every module of a package so that their ``register`` decorators run (fairseq's auto-import)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules([package_dir]):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package_name}.{module.name}")
