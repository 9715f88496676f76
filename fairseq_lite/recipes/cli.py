"""fairseq2's recipe command line (src/fairseq2/recipe/cli.py) over fairseq_lite's trainer.

::

    python -m fairseq_lite.recipes.wav2vec2.ssl --config-file C.yaml [--config k=v ...] [--dump-config]
        [--checkpoint-dir DIR] OUTPUT_DIR

``kind`` is ``ssl``, ``asr``, ``ssl.eval`` or ``asr.eval``. OUTPUT_DIR receives ``config.yaml`` (the resolved
recipe config), ``fairseq_config.yaml`` (the FairseqConfig it maps to), ``checkpoints/`` (or --checkpoint-dir),
``logs/`` and, for the eval recipes, the table of results.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

from fairseq_lite.cli.common import check_output_dir, launch_training, run_cli, setup_logging
from fairseq_lite.errors import ConfigError
from fairseq_lite.recipes import asset_cards
from fairseq_lite.recipes.config_map import load_recipe_config, recipe_to_fairseq

logger = logging.getLogger("fairseq_lite.recipes")

#: dataset families each recipe reads (fairseq2's card families)
FAMILIES = {"ssl": ("wav2vec2_ssl", "wav2vec2_asr", "generic_asr"), "asr": ("wav2vec2_asr", "generic_asr")}


def parse_args(kind: str, argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {kind}", description=f"fairseq2-style wav2vec2 {kind} recipe")
    parser.add_argument("--config-file", metavar="CONFIG_FILE", help="recipe configuration file (YAML)")
    parser.add_argument("--config", dest="config_overrides", metavar="NAME=VALUE", nargs="*", action="extend",
                        default=[], help="configuration overrides, VALUE read as YAML")
    parser.add_argument("--dump-config", action="store_true", help="print the resolved recipe config and exit")
    parser.add_argument("--checkpoint-dir", metavar="CHECKPOINT_DIR",
                        help="where checkpoints are written/read (default: OUTPUT_DIR/checkpoints)")
    parser.add_argument("output_dir", nargs="?", help="directory to store recipe artifacts")
    args = parser.parse_args(argv)
    if args.output_dir is None and args.config_overrides and "=" not in args.config_overrides[-1]:
        args.output_dir = args.config_overrides.pop()  # ``--config k=v OUTPUT_DIR``: --config took it
    if not args.dump_config and not args.output_dir:
        raise ConfigError(f"python -m {kind}: OUTPUT_DIR is required (the folder for checkpoints, logs and config)")
    return args


def dataset_folder(recipe: dict, kind: str, cards_dir: Optional[str]) -> str:
    """The manifest folder of ``dataset.name``: an asset card's, or the name itself when it is a folder or .tsv."""
    name = recipe["dataset"]["name"]
    if name and os.path.exists(name):
        return os.path.abspath(name if os.path.isdir(name) else os.path.dirname(name))
    extra = recipe["common"]["assets"]["extra_paths"]
    store = asset_cards.AssetStore([asset_cards.PACKAGE_CARDS, cards_dir, asset_cards.user_asset_dir(), *extra])
    card = store.resolve(str(name))
    families = FAMILIES[kind.split(".")[0]]
    family = card.get("dataset_family")
    if family not in families:
        raise ConfigError(f"{card['_where']}: key 'dataset_family' is '{family}', but the {kind} recipe reads "
                          f"{' or '.join(families)} datasets")
    return asset_cards.manifest_dir(card)


def write_yaml(tree: dict, path: str) -> None:
    """``tree`` as YAML at ``path``, replacing an old file only once complete."""
    import yaml

    from fairseq_lite.file_io import atomic_write_bytes

    atomic_write_bytes(yaml.safe_dump(tree, sort_keys=False).encode("utf-8"), path)


def pretrained_path(recipe: dict) -> str:
    """``pretrained_model.name`` as a checkpoint file (fairseq2 names a model card; we read the file)."""
    path = recipe["pretrained_model"]["name"]
    if not path or not os.path.isfile(path):
        raise ConfigError(f"pretrained_model.name '{path}' is not a checkpoint file: set it to the pretraining "
                          "checkpoint, e.g. --config pretrained_model.name=SSL_OUT/checkpoints/checkpoint_last.pt")
    return os.path.abspath(path)


def train(kind: str, recipe: dict, data: str, output_dir: str, checkpoint_dir: str) -> None:
    """Map the recipe onto a FairseqConfig, record it in OUTPUT_DIR and train with fairseq_lite's loop."""
    from fairseq_lite.dataclass.initialize import finalize_config
    from fairseq_lite.recipes.manifests import prepare_asr_data, split_names

    w2v_path = None
    if kind == "asr":
        w2v_path = pretrained_path(recipe)
        ds = recipe["dataset"]
        splits = split_names(ds["train_split"]) + split_names(ds["valid_split"])
        data = prepare_asr_data(data, dict.fromkeys(splits), os.path.join(output_dir, "data"),
                                dict_split=split_names(ds["train_split"])[0], key="dataset.train_split/valid_split")
    os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
    fs = recipe_to_fairseq(kind, recipe, data, checkpoint_dir, os.path.join(output_dir, "logs", "train.log"),
                           w2v_path)
    cfg = finalize_config(fs)
    write_yaml(fs, os.path.join(output_dir, "fairseq_config.yaml"))
    launch_training(cfg)


def main(kind: str, argv: List[str], cards_dir: Optional[str] = None) -> int:
    """Run recipe ``kind`` (ssl, asr, ssl.eval, asr.eval); ``cards_dir`` is the recipe's own cards folder."""
    args = parse_args(kind, argv)
    recipe = load_recipe_config(kind, args.config_file, args.config_overrides)
    if args.dump_config:
        import yaml

        print(yaml.safe_dump(recipe, sort_keys=False), end="")
        return 0
    output_dir = os.path.abspath(args.output_dir)
    check_output_dir(output_dir, "OUTPUT_DIR")
    checkpoint_dir = os.path.abspath(args.checkpoint_dir or os.path.join(output_dir, "checkpoints"))
    check_output_dir(checkpoint_dir, "--checkpoint-dir")
    data = dataset_folder(recipe, kind, cards_dir)
    os.makedirs(output_dir, exist_ok=True)
    if kind.endswith(".eval"):
        from fairseq_lite.recipes.evaluate import evaluate

        setup_logging()
        evaluate(kind, recipe, data, output_dir, checkpoint_dir)
        return 0
    write_yaml(recipe, os.path.join(output_dir, "config.yaml"))
    train(kind, recipe, data, output_dir, checkpoint_dir)
    return 0


def cli_main(kind: str, cards_dir: Optional[str] = None, argv: Optional[List[str]] = None) -> None:
    run_cli(lambda a: main(kind, a, cards_dir), argv)
