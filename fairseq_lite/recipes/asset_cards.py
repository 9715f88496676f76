"""fairseq2's dataset asset cards: YAML documents (``---`` between them) naming a dataset and its manifests.

::

    name: librilight_asr_10h
    dataset_family: wav2vec2_asr
    base: librilight_common            # optional: fields not given here are read from that card
    dataset_config:
      data: /path/to/manifests/        # fairseq2's README spelling; its code reads manifest_dir

Cards are read from the package's cards folder, the recipe's cards folder, ``$FAIRSEQ2_USER_ASSET_DIR`` (or
``~/.config/fairseq2/assets``, as fairseq2) and ``common.assets.extra_paths``; a later folder's card replaces an
earlier one of the same name. Relative paths in a card are read from the card file's folder.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Tuple

from fairseq_lite.errors import ConfigError

FAMILIES = ("wav2vec2_ssl", "wav2vec2_asr", "generic_asr")
CARD_KEYS = ("name", "dataset_family", "base", "dataset_config", "tokenizer_family", "tokenizer")
PATH_KEYS = ("data", "manifest_dir")
PACKAGE_CARDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cards")


def user_asset_dir() -> Optional[str]:
    """``$FAIRSEQ2_USER_ASSET_DIR``, else ``$XDG_CONFIG_HOME/fairseq2/assets`` or ``~/.config/fairseq2/assets``."""
    path = os.environ.get("FAIRSEQ2_USER_ASSET_DIR")
    if not path:
        config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        path = os.path.join(config_home, "fairseq2", "assets")
    return path if os.path.isdir(path) else None


def _card_files(folder: str) -> List[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith((".yaml", ".yml"))]
    return files


def _check_card(card: object, where: str) -> dict:
    """The card if well formed, else a ConfigError naming ``where`` (file and document) and the key."""
    if not isinstance(card, dict):
        raise ConfigError(f"{where}: an asset card must be a mapping of keys (name, dataset_family, dataset_config)")
    if not isinstance(card.get("name"), str) or not card["name"]:
        raise ConfigError(f"{where}: key 'name' is missing: every asset card needs a name")
    where = f"{where} (card {card['name']})"
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}': asset card keys are {', '.join(CARD_KEYS)}")
    family = card.get("dataset_family")
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"{where}: key 'dataset_family' is '{family}': use one of {', '.join(FAMILIES)}")
    config = card.get("dataset_config")
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"{where}: key 'dataset_config' must be a mapping with 'data' or 'manifest_dir'")
    return card


def load_card_file(path: str) -> List[Tuple[dict, str]]:
    """The cards of one YAML file, each with its ``file (document n)`` location."""
    import yaml

    with open(path, encoding="utf-8") as f:
        documents = list(yaml.safe_load_all(f))
    cards = []
    for n, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        where = path if len(documents) == 1 else f"{path} (document {n})"
        cards.append((_check_card(doc, where), where))
    return cards


def _card_folder(where: str) -> str:
    """The folder of the card file a ``file (document n)`` location names."""
    return os.path.dirname(where.rsplit(" (document ", 1)[0])


class AssetStore:
    """name → (card, where it was read) over the search folders, later folders winning."""

    def __init__(self, folders: Iterable[Optional[str]]):
        self.cards: Dict[str, Tuple[dict, str]] = {}
        for folder in folders:
            if not folder:
                continue
            if not os.path.isdir(folder):
                raise ConfigError(f"asset card folder {folder} does not exist (common.assets.extra_paths)")
            seen: Dict[str, str] = {}
            for path in _card_files(folder):
                for card, where in load_card_file(path):
                    if card["name"] in seen:
                        raise ConfigError(f"{where}: card '{card['name']}' is also defined in {seen[card['name']]}")
                    seen[card["name"]] = where
                    self.cards[card["name"]] = (card, where)

    def resolve(self, name: str, chain: Tuple[str, ...] = ()) -> dict:
        """The card ``name`` with its ``base`` cards' fields under its own (``dataset_config`` merged key by key)."""
        if name not in self.cards:
            known = ", ".join(sorted(self.cards)) or "none"
            raise ConfigError(f"unknown dataset asset card '{name}': the known cards are {known} (add one in "
                              "$FAIRSEQ2_USER_ASSET_DIR or common.assets.extra_paths)")
        card, where = self.cards[name]
        merged = {"_where": where, "dataset_config": {}}
        base = card.get("base")
        if base is not None:
            if base in chain + (name,):
                raise ConfigError(f"{where}: key 'base' makes a cycle: {' -> '.join(chain + (name, base))}")
            if base not in self.cards:
                raise ConfigError(f"{where}: key 'base' names the unknown card '{base}'")
            merged.update(self.resolve(base, chain + (name,)))
            merged["dataset_config"] = dict(merged["dataset_config"])
        for key, value in card.items():
            if key == "dataset_config":
                merged["dataset_config"].update({k: (v, where) for k, v in (value or {}).items()})
            elif key != "base":
                merged[key] = value
        merged["_where"] = where
        return merged


def manifest_dir(card: dict) -> str:
    """The folder of the card's ``{split}.tsv`` files: ``dataset_config.data`` or ``manifest_dir`` (a .tsv file
    means its folder, as fairseq2's ``from_path``); a ConfigError naming the card file and key otherwise."""
    given = {key: card["dataset_config"][key] for key in PATH_KEYS if key in card["dataset_config"]}
    where = card["_where"]
    if not given:
        raise ConfigError(f"{where}: key 'dataset_config.data' is missing: set it to the folder of the card's "
                          "{split}.tsv manifests (fairseq2 would silently read the current directory)")
    folders = {}
    for key, (value, origin) in given.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{origin}: key 'dataset_config.{key}' must be a path, not {value!r}")
        path = os.path.normpath(os.path.join(_card_folder(origin), os.path.expanduser(value)))
        if not os.path.exists(path):
            raise ConfigError(f"{origin}: key 'dataset_config.{key}': {path} does not exist")
        folders[key] = path if os.path.isdir(path) else os.path.dirname(path)
    if len(set(folders.values())) > 1:
        raise ConfigError(f"{where}: keys 'dataset_config.data' and 'dataset_config.manifest_dir' name different "
                          f"folders ({folders['data']} and {folders['manifest_dir']}): keep one")
    return next(iter(folders.values()))
