"""The legacy ``fairseq-train`` argument parser, generated from the same dataclasses (fairseq's options.py).

Field ``foo_bar`` becomes ``--foo-bar``; the task's ``data`` field is the positional argument. Booleans
take ``--flag`` (True) and ``--no-flag`` (False) — on purpose unlike fairseq, whose True-default booleans
were ``store_false`` so that ``--log-compression`` silently turned log compression OFF (reference §12).
List fields take ``[0.1, 10]``, ``0.1,10`` or one value. Values are converted by argparse, so a bad one
(``--lr abc``) is an error naming the flag. Fields whose default is an interpolation
(``${optimization.lr}``) are set through the field they point at and get no flag, as in fairseq.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple

from fairseq_lite.dataclass.configs import TYPED_GROUPS, FairseqConfig
from fairseq_lite.dataclass.utils import closest_match, parse_list
from fairseq_lite.errors import ConfigError

#: --selector flag → config group it chooses the ``_name`` of.
SELECTORS = {
    "task": "task",
    "arch": "model",
    "criterion": "criterion",
    "optimizer": "optimizer",
    "lr_scheduler": "lr_scheduler",
}

Target = Tuple[str, str]  # (group, field)
_LIST_EXAMPLES = {float: "0.005, 0.1,10 or '[0.1, 10]'", int: "2, 2,4 or '[2, 4]'", str: "a, a,b or \"['a', 'b']\""}


class _ErrorRaisingParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def __init__(self, prog: str = "fairseq-train", **kwargs: Any):
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            flags = [a for a in message.split(":", 1)[1].split() if a.startswith("-")]
            hints = []
            for flag in flags:
                close = closest_match(flag, [o for o in self._option_string_actions if o.startswith("--")])
                if close:
                    hints.append(f"{flag} → did you mean {close}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _value_parser(tp: Any) -> Optional[Callable[[str], Any]]:
    """argparse's ``type=`` for a field: int/float, or a list of them (strings and others stay as given)."""
    tp = _unwrap_optional(tp)
    if tp in (int, float):
        return tp
    item_type = _list_item_type(tp)
    if item_type is None:
        return None

    def parse(text: str) -> list:
        try:
            return parse_list(text, item_type)
        except (ConfigError, ValueError, TypeError):
            example = _LIST_EXAMPLES[item_type]
            raise argparse.ArgumentTypeError(f"expected one {item_type.__name__} or a list of them ({example}), "
                                             f"got {text!r}") from None

    return parse


def _list_item_type(tp: Any) -> Optional[type]:
    """The element type of a List field (float, int, str), or None when ``tp`` is not a list."""
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) in (list, List):
        (item,) = typing.get_args(tp) or (str,)
        return item if item in (int, float, str) else None
    return None


class LegacyParser:
    """Builds the parser for the selected components and maps parsed flags back to config groups."""

    def __init__(self, selected: Dict[str, Optional[str]], prog: str = "fairseq-train"):
        self.parser = _ErrorRaisingParser(prog=prog, allow_abbrev=False)
        self.targets: Dict[str, List[Target]] = {}  # argparse dest → every (group, field) it sets
        self.parser.add_argument("data", nargs="?", help="path to the data directory (task.data)")
        for flag, group in SELECTORS.items():
            names = [f"--{flag.replace('_', '-')}"] + (["-a"] if flag == "arch" else [])
            self.parser.add_argument(*names, dest=f"select_{flag}", default=selected.get(flag), metavar="NAME",
                                     help=f"{group} to use (registry name)")
        # components first: a component field such as the cosine scheduler's min_lr owns --min-lr,
        # otherwise fairseq's old alias --min-lr means optimization.stop_min_lr
        for flag, group in SELECTORS.items():
            dc_cls = self._component_dataclass(group, selected.get(flag))
            if dc_cls is not None:
                self._add_dataclass(group, dc_cls)
        for group in TYPED_GROUPS:
            factory = {f.name: f.default_factory for f in dataclasses.fields(FairseqConfig)}[group]
            self._add_dataclass(group, factory)

    @staticmethod
    def _component_dataclass(group: str, name: Optional[str]) -> Optional[type]:
        if name is None:
            return None
        import fairseq_lite  # noqa: F401
        from fairseq_lite.registry import REGISTRIES

        return REGISTRIES[group].get_dataclass(name)

    def _add_dataclass(self, group: str, dc_cls: type) -> None:
        hints = typing.get_type_hints(dc_cls)
        for f in dataclasses.fields(dc_cls):
            if f.name.startswith("_") or (isinstance(f.default, str) and f.default.startswith("${")):
                continue
            if f.name == "data" and group == "task":
                self.targets.setdefault("data", []).append((group, f.name))
                continue
            dest = f.name
            if dest in self.targets:  # the same field name in two groups: one flag sets both
                self.targets[dest].append((group, f.name))
                continue
            self.targets[dest] = [(group, f.name)]
            tp = _unwrap_optional(hints[f.name])
            flag = f"--{f.name.replace('_', '-')}"
            names = [flag]
            alias = f.metadata.get("argparse_alias")
            if alias and alias not in self.parser._option_string_actions:
                names.append(alias)
            help_text = f.metadata.get("help")
            if tp is bool:
                self.parser.add_argument(*names, dest=dest, action="store_const", const=True,
                                         default=argparse.SUPPRESS, help=help_text)
                negative = f"--no-{f.name.replace('_', '-')}"
                if negative not in self.parser._option_string_actions:
                    self.parser.add_argument(negative, dest=dest, action="store_const", const=False,
                                             default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            elif isinstance(tp, type) and issubclass(tp, Enum):
                self.parser.add_argument(*names, dest=dest, choices=[m.value for m in tp],
                                         default=argparse.SUPPRESS, help=help_text)
            else:
                self.parser.add_argument(*names, dest=dest, type=_value_parser(tp), default=argparse.SUPPRESS,
                                         help=help_text)

    def to_config(self, args: argparse.Namespace) -> Dict[str, Any]:
        """A nested config dict holding the selected ``_name``s and only the flags that were given."""
        cfg: Dict[str, Any] = {}
        for flag, group in SELECTORS.items():
            name = getattr(args, f"select_{flag}")
            if name is not None:
                cfg.setdefault(group, {})["_name"] = name
        if args.data is not None and "task" not in cfg:
            raise ConfigError(f"data directory {args.data} given without a task: add --task, e.g. --task audio_pretraining")
        for dest, targets in self.targets.items():
            if not hasattr(args, dest) or getattr(args, dest) is None and dest == "data":
                continue
            value = getattr(args, dest)
            for group, name in targets:
                if group in SELECTORS.values() and group not in cfg:
                    continue  # a field of a component that was not selected
                cfg.setdefault(group, {})[name] = value
        return cfg


def parse_legacy_args(argv: List[str], prog: str = "fairseq-train") -> Dict[str, Any]:
    """Parse ``fairseq-train`` flags into a nested config dict (two passes, as fairseq's parse_args_and_arch)."""
    pre = _ErrorRaisingParser(prog=prog, add_help=False, allow_abbrev=False)
    for flag in SELECTORS:
        names = [f"--{flag.replace('_', '-')}"] + (["-a"] if flag == "arch" else [])
        pre.add_argument(*names, dest=flag, default=None)
    known, _ = pre.parse_known_args(argv)
    selected = {flag: getattr(known, flag) for flag in SELECTORS}
    if selected["lr_scheduler"] is None:
        selected["lr_scheduler"] = "fixed"
        if selected["optimizer"] is None or not _registered("lr_scheduler", "fixed"):
            selected["lr_scheduler"] = None
    legacy = LegacyParser(selected, prog)
    args = legacy.parser.parse_args(argv)
    return legacy.to_config(args)


def _registered(group: str, name: str) -> bool:
    import fairseq_lite  # noqa: F401
    from fairseq_lite.registry import REGISTRIES

    return name in REGISTRIES[group]


def build_help(argv: List[str], prog: str = "fairseq-train") -> str:
    """The full --help text for the components selected in ``argv``."""
    pre = _ErrorRaisingParser(prog=prog, add_help=False, allow_abbrev=False)
    for flag in SELECTORS:
        pre.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None)
    known, _ = pre.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    return LegacyParser({flag: getattr(known, flag) for flag in SELECTORS}, prog).parser.format_help()
