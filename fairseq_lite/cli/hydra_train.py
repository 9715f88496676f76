"""``fairseq-hydra-train``: compose a fairseq yaml with overrides and train (fairseq_cli/hydra_train.py).

Usage, as with fairseq::

    fairseq-hydra-train task.data=/manifests --config-dir config/pretraining \\
        --config-name wav2vec2_base_librispeech +optimization.update_freq='[4]'

Overrides may stand before, after or between the flags, with or without ``+``/``++``. The working
directory never changes and nothing is written outside ``checkpoint.save_dir`` unless
``hydra.run.dir=DIR`` is given, which records the composed config under ``DIR/.hydra/``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, OmegaConfBaseException

from fairseq_lite.cli.common import launch_training, run_cli
from fairseq_lite.dataclass.initialize import UNTYPED_GROUPS, add_defaults, compose_config, finalize_config
from fairseq_lite.dataclass.utils import config_to_dict, describe_omegaconf_error
from fairseq_lite.errors import ConfigError

logger = logging.getLogger("fairseq_lite.cli.hydra_train")

_FLAG_ALIASES = {
    "-cd": "--config-dir",
    "-cp": "--config-path",
    "-cn": "--config-name",
    "-c": "--cfg",
}
_VALUE_FLAGS = {"--config-dir", "--config-path", "--config-name", "--cfg", "--package", "-p"}
_CFG_CHOICES = ("job", "hydra", "all")

HELP = """usage: fairseq-hydra-train [--config-dir DIR] [--config-name NAME] [--cfg job] [--resolve] [--debug]
                           [key=value | +key=value | ++key=value ...]

Compose DIR/NAME.yaml (fairseq's yaml files work as they are) with the overrides and train.
  --config-dir, -cd DIR    folder of the yaml (default: the current directory)
  --config-name, -cn NAME  yaml file name without .yaml
  --cfg job                print the resolved config and exit without training
  --debug                  show tracebacks (also HYDRA_FULL_ERROR=1)
"""


def parse_argv(argv: List[str]) -> Tuple[argparse.Namespace, List[str], List[Tuple[str, str]]]:
    """Split argv into Hydra's flags, overrides (anywhere on the line) and unknown ``--kebab-flag value`` pairs."""
    flags = argparse.Namespace(config_dir=None, config_name=None, cfg=None, resolve=False, help=False)
    overrides: List[str] = []
    legacy: List[Tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("-") else (arg, "", "")
        name = _FLAG_ALIASES.get(name, name)
        if arg in ("-h", "--help"):
            flags.help = True
        elif arg == "--resolve":
            flags.resolve = True
        elif arg in ("-m", "--multirun"):
            raise ConfigError("multirun sweeps are not supported: run one fairseq-hydra-train command per setting")
        elif name in _VALUE_FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"{name} needs a value")
            if name == "--config-path":  # Hydra's other spelling, relative to the current directory here
                name = "--config-dir"
            if name in ("--package", "-p"):
                raise ConfigError("--package is not supported by fairseq-hydra-train")
            setattr(flags, name.lstrip("-").replace("-", "_"), value)
        elif arg.startswith("--"):
            # fairseq's README writes some model options as flags (--attn-type espnet --pos-enc-type rope)
            if eq:
                value = inline
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
                i += 1
                value = argv[i]
            else:
                value = "true"
            legacy.append((name[2:].replace("-", "_"), value))
        elif arg.startswith("-"):
            raise ConfigError(f"unknown flag {arg}; see fairseq-hydra-train --help")
        else:
            overrides.append(arg)
        i += 1
    if flags.cfg is not None and flags.cfg not in _CFG_CHOICES:
        raise ConfigError(f"--cfg takes one of {', '.join(_CFG_CHOICES)}, not '{flags.cfg}'")
    return flags, overrides, legacy


def _translate_legacy_flags(cfg, legacy: List[Tuple[str, str]]) -> List[str]:
    """``--pos-enc-type rope`` → ``model.pos_enc_type=rope``: the group whose component has that field."""
    from fairseq_lite.dataclass.initialize import _registry
    from fairseq_lite.dataclass.utils import field_names

    translated = []
    for key, value in legacy:
        groups = []
        for group in UNTYPED_GROUPS:
            node = cfg.get(group)
            registry = _registry(group)
            if node is None or registry is None or not isinstance(node, dict) and not OmegaConf.is_dict(node):
                continue
            name = node.get("_name")
            if name in registry and registry.get_dataclass(name) and key in field_names(registry.get_dataclass(name)):
                groups.append(group)
        if len(groups) != 1:
            raise ConfigError(
                f"unknown flag --{key.replace('_', '-')}: fairseq-hydra-train takes overrides such as "
                f"model.{key}={value}"
            )
        override = f"{groups[0]}.{key}={value}"
        logger.info("reading --%s %s as %s", key.replace("_", "-"), value, override)
        translated.append(override)
    return translated


def write_run_dir(run_dir: str, cfg, overrides: List[str]) -> None:
    """Hydra's ``.hydra/config.yaml`` and ``overrides.yaml``, written only when hydra.run.dir is asked for."""
    hydra_dir = os.path.join(run_dir, ".hydra")
    os.makedirs(hydra_dir, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config_to_dict(cfg)), os.path.join(hydra_dir, "config.yaml"))
    OmegaConf.save(OmegaConf.create(overrides), os.path.join(hydra_dir, "overrides.yaml"))


def check_interpolations(node) -> None:
    """Resolve every ``${...}`` in ``node``: a broken one is a ConfigError naming its key; one that points at a
    ``???`` value is fine here (``--cfg job`` may be run before every mandatory value is set)."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        if OmegaConf.is_interpolation(node, key):
            try:
                node[key]
            except InterpolationToMissingValueError:
                continue
            except OmegaConfBaseException as exc:
                raise ConfigError(describe_omegaconf_error(exc)) from None
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
            check_interpolations(child)


def job_yaml(cfg: DictConfig) -> str:
    """``--cfg job``'s text: the config with interpolations resolved (left as written when one points at ???)."""
    check_interpolations(cfg)
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except InterpolationToMissingValueError:
        return OmegaConf.to_yaml(cfg, resolve=False)


#: fairseq's examples/wav2vec/xlsr/README.md: optimization.max_update per benchmark (its finetune.yaml leaves it ???).
XLSR_MAX_UPDATE = (("Babel", 26000), ("Common Voice", 13000), ("VoxPopuli", 50000), ("MLS 10h", 20000))


def require_max_update(composed: DictConfig, config_dir: Optional[str], config_name: Optional[str]) -> None:
    """A ConfigError when ``optimization.max_update`` is ``???``; for an XLS-R config (``xlsr`` in its folder or
    name, as examples/wav2vec/xlsr/config/finetune.yaml) it quotes the README's values per benchmark."""
    if not OmegaConf.is_missing(composed.optimization, "max_update"):
        return
    config_file = os.path.join(os.path.abspath(config_dir or os.getcwd()), config_name or "")
    config_file += "" if config_file.endswith(".yaml") else ".yaml"
    message = f"optimization.max_update is ??? in {config_file}: set the number of updates, e.g. "
    message += "optimization.max_update="
    if "xlsr" not in config_file.lower():
        raise ConfigError(message + "...")
    values = ", ".join(f"{benchmark} {updates}" for benchmark, updates in XLSR_MAX_UPDATE)
    raise ConfigError(f"{message}13000 (fairseq's XLS-R README fine-tunes with {values})")


def main(argv: List[str]) -> Optional[int]:
    flags, overrides, legacy = parse_argv(argv)
    if flags.help:
        print(HELP)
        return 0
    run_dir = None
    kept = []
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "hydra.run.dir":
            run_dir = value
        elif key.startswith("hydra.") or key.startswith("hydra/"):
            logger.info("ignoring %s: fairseq-hydra-train does not change directory or configure logging", override)
        else:
            kept.append(override)
    composed = compose_config(flags.config_dir, flags.config_name, kept)
    if legacy:
        kept += _translate_legacy_flags(composed, legacy)
        composed = compose_config(flags.config_dir, flags.config_name, kept)
    if flags.cfg is not None:
        if flags.cfg == "hydra":
            print("# fairseq-hydra-train uses no Hydra job settings: no output folder, no directory change")
            return 0
        print(job_yaml(add_defaults(composed)))
        return 0
    require_max_update(composed, flags.config_dir, flags.config_name)
    cfg = finalize_config(composed)
    if run_dir:
        write_run_dir(run_dir, cfg, kept)
    launch_training(cfg)
    return 0


def cli_main() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli_main()
