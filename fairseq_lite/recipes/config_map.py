"""Recipe configs (fairseq2's sections) and the one mapping between them and a FairseqConfig.

``DEFAULTS[kind]`` holds each recipe's sections with fairseq2's defaults (recipes/wav2vec2/{ssl,asr}/config.py,
data/dataset.py, criterion.py); ``load_recipe_config`` merges a ``--config-file`` and ``--config k=v`` onto
them, refusing unknown keys and values of the wrong type. ``MAPPING`` pairs recipe keys with fairseq keys;
``recipe_to_fairseq`` and ``fairseq_to_recipe`` both read it, so the two directions cannot drift apart.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fairseq_lite.errors import ConfigError

logger = logging.getLogger("fairseq_lite.recipes")

#: dataset keys of fairseq2's pipeline that our batching has no counterpart for: accepted, with a warning if set
INERT_DATASET = {"family": None, "dtype": "torch.float16", "num_seqs_multiple_of": 8, "drop_remainder": False,
                 "example_shuffle_window": 500_000, "batch_shuffle_window": 0, "max_num_batches": None,
                 "num_prefetch": 4, "cached_fd_count": 1000}


def _dataset(name: str, valid: str, min_len: int, max_len: int, max_elements: int, train: Optional[str]) -> dict:
    return {"name": name, "train_split": train, "valid_split": valid, "min_audio_len": min_len,
            "max_audio_len": max_len, "max_num_elements": max_elements, "normalize_audio": False, "npc": 10,
            **INERT_DATASET}


def _regime(steps: int, validate_after: int, validate_every: int, checkpoint_every: int, score: Optional[str]) -> dict:
    return {"num_steps": steps, "validate_after_n_steps": validate_after, "validate_every_n_steps": validate_every,
            "checkpoint_every_n_steps": checkpoint_every, "publish_metrics_every_n_steps": 200,
            "keep_last_n_checkpoints": None, "score_metric": score}


_COMMON = {"seed": 2, "assets": {"extra_paths": []}}
_SSL_LOSS = {"diversity_loss_weight": 0.1, "feature_penalty_weight": 10.0}
_EVALUATOR = {"amp": True, "amp_dtype": "torch.float16"}
_EVAL_MODEL = {"name": None, "checkpoint": "last"}

DEFAULTS: Dict[str, dict] = {
    "ssl": {
        "model": {"family": "wav2vec2", "arch": "base", "config_overrides": {}},
        "dataset": _dataset("librispeech_960h", "valid", 32_000, 250_000, 1_500_000, "train"),
        "trainer": {"mixed_precision": {"dtype": "torch.float16"}, "grad_accumulation": {"num_batches": 1}},
        "loss": dict(_SSL_LOSS),
        "optimizer": {"name": "adamw", "config": {"lr": 5e-4, "betas": [0.9, 0.98], "eps": 1e-6,
                                                  "weight_decay": 0.01}},
        "lr_scheduler": {"name": "polynomial_decay", "config": {"num_warmup_steps": 32_000}},
        "regime": _regime(400_000, 0, 5_000, 25_000, None),
        "common": _COMMON,
    },
    "asr": {
        "model": {"family": "wav2vec2_asr", "arch": "base_10h", "config_overrides": {}},
        "pretrained_model": {"name": "wav2vec2_base"},
        "dataset": {**_dataset("librilight_asr_10h", "dev_other", 1, 800_000, 3_200_000, "train"),
                    "example_shuffle_window": 1, "batch_shuffle_window": 1},
        "tokenizer": {"name": "librispeech_asr"},
        "trainer": {"mixed_precision": {"dtype": "torch.float16"}, "grad_accumulation": {"num_batches": 4},
                    "freeze_encoder_for_n_steps": 10_000},
        "optimizer": {"name": "adamw", "config": {"lr": 5e-5, "betas": [0.9, 0.98], "eps": 1e-8,
                                                  "weight_decay": 0.0}},
        "lr_scheduler": {"name": "tri_stage", "config": {"stage_ratio": [0.1, 0.4, 0.5], "start_lr_scale": 0.01,
                                                         "final_lr_scale": 0.05}},
        "regime": _regime(20_000, 9_999, 1_000, 5_000, "wer"),
        "common": _COMMON,
    },
    "ssl.eval": {
        "model": dict(_EVAL_MODEL),
        "dataset": _dataset("librispeech_960h", "valid", 32_000, 250_000, 1_500_000, None),
        "evaluator": dict(_EVALUATOR),
        "loss": dict(_SSL_LOSS),
        "common": _COMMON,
    },
    "asr.eval": {
        "model": dict(_EVAL_MODEL),
        "dataset": _dataset("librilight_asr_10h", "test_clean", 1, 800_000, 3_200_000, None),
        "tokenizer": {"name": "librispeech_asr"},
        "evaluator": dict(_EVALUATOR),
        "common": _COMMON,
    },
}

#: lr_scheduler.config keys per scheduler: fairseq2 name → (our field, fairseq2 default)
LR_SCHEDULERS = {
    "polynomial_decay": {"num_warmup_steps": ("warmup_updates", 0), "power": ("power", 1.0),
                         "final_lr": ("end_learning_rate", 0.0)},
    "tri_stage": {"stage_ratio": ("phase_ratio", [0.0, 0.0, 1.0]), "start_lr_scale": ("init_lr_scale", 0.01),
                  "final_lr_scale": ("final_lr_scale", 0.01)},
}
#: dict-valued keys whose contents are free (checked elsewhere)
FREE_KEYS = ("model.config_overrides", "lr_scheduler.config")
DTYPES = {"torch.float32": (False, False), "torch.float16": (True, False), "torch.bfloat16": (False, True)}

# ---------------------------------------------------------------------------------------------
# loading and checking
# ---------------------------------------------------------------------------------------------


def _same_type(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    return isinstance(value, type(default))


def merge_checked(base: dict, user: dict, where: str, prefix: str = "", model_fields: Sequence[str] = ()) -> None:
    """Merge ``user`` into ``base`` in place; an unknown key, a value of the wrong type or a
    ``model.config_overrides`` key that is no field of the model (``model_fields``) is a ConfigError naming
    ``where`` (the file or --config) and the dotted key."""
    from fairseq_lite.dataclass.utils import closest_match

    if not isinstance(user, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'the config'}' must be a mapping of keys")
    for key, value in user.items():
        dotted = prefix + str(key)
        if key not in base:
            close = closest_match(str(key), [str(k) for k in base])
            hint = f" (did you mean '{prefix}{close}'?)" if close else f"; known keys: {', '.join(map(str, base))}"
            raise ConfigError(f"{where}: unknown recipe key '{dotted}'{hint}")
        if dotted in FREE_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key '{dotted}' must be a mapping, not {value!r}")
            if dotted == "model.config_overrides":
                _check_model_fields(value, model_fields, where)
            base[key] = {**base[key], **value} if dotted == "model.config_overrides" else dict(value)
        elif isinstance(base[key], dict):
            merge_checked(base[key], value, where, dotted + ".", model_fields)
        elif isinstance(value, str) and isinstance(base[key], float) and _is_number(value):
            base[key] = float(value)  # YAML 1.1 reads 5e-05 (fairseq2's base_10h.yaml lr) as a string
        elif not _same_type(base[key], value):
            raise ConfigError(f"{where}: key '{dotted}' is {value!r}, expected a {type(base[key]).__name__} "
                              f"like the default {base[key]!r}")
        else:
            base[key] = value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: fairseq2 model config names (as its shipped recipe configs write them) → fairseq's model field
FAIRSEQ2_MODEL_FIELDS = {"encoder_config.first_pass_dropout_p": "dropout_input"}


def fairseq_model_overrides(overrides: dict, prefix: str = "") -> dict:
    """``model.config_overrides`` with fairseq2's nested names (FAIRSEQ2_MODEL_FIELDS) as fairseq field names."""
    flat = {}
    for key, value in overrides.items():
        dotted = prefix + str(key)
        if isinstance(value, dict) and any(name.startswith(dotted + ".") for name in FAIRSEQ2_MODEL_FIELDS):
            flat.update(fairseq_model_overrides(value, dotted + "."))
        else:
            flat[FAIRSEQ2_MODEL_FIELDS.get(dotted, dotted)] = value
    return flat


def _check_model_fields(overrides: dict, fields: Sequence[str], where: str) -> None:
    from fairseq_lite.dataclass.utils import closest_match

    for key in fairseq_model_overrides(overrides):
        if fields and key not in fields:
            close = closest_match(str(key), list(fields))
            hint = f": did you mean '{close}'?" if close else " (config_overrides take fairseq's model field names)"
            raise ConfigError(f"{where}: unknown recipe key 'model.config_overrides.{key}'{hint}")


def model_fields(kind: str) -> List[str]:
    """The fairseq model fields ``model.config_overrides`` may set (none for the eval recipes)."""
    if kind.endswith(".eval"):
        return []
    from fairseq_lite.dataclass.initialize import _registry
    from fairseq_lite.dataclass.utils import field_names

    return list(field_names(_registry("model").get_dataclass(MODEL_NAMES[kind])))


def parse_override(text: str) -> dict:
    """``a.b=VALUE`` (VALUE read as YAML, as fairseq2's --config) as the nested ``{'a': {'b': value}}``."""
    import yaml

    key, eq, raw = text.partition("=")
    if not eq or not key:
        raise ConfigError(f"--config {text}: write overrides as key=value, e.g. dataset.valid_split=dev_other")
    value = yaml.safe_load(raw) if raw else None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_recipe_config(kind: str, config_file: Optional[str], overrides: Sequence[str]) -> dict:
    """The resolved recipe config: DEFAULTS[kind], then the file, then each ``--config k=v``."""
    import yaml

    config = copy.deepcopy(DEFAULTS[kind])
    fields = model_fields(kind)
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise ConfigError(f"--config-file {config_file} does not exist")
        with open(config_file, encoding="utf-8") as f:
            merge_checked(config, yaml.safe_load(f) or {}, config_file, model_fields=fields)
    for text in overrides:
        merge_checked(config, parse_override(text), f"--config {text}", model_fields=fields)
    for key, default in INERT_DATASET.items():
        if config["dataset"].get(key) != DEFAULTS[kind]["dataset"][key]:
            logger.warning("dataset.%s has no effect in fairseq_lite (its batching is fairseq's)", key)
    return config


# ---------------------------------------------------------------------------------------------
# the mapping
# ---------------------------------------------------------------------------------------------


def _get(tree: dict, dotted: str, default: Any = KeyError) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is KeyError:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _dtype_to_fs(dtype: str) -> Tuple[bool, bool]:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _dtype_from_fs(fp16: bool, bf16: bool) -> Tuple[str]:
    return (next(name for name, flags in DTYPES.items() if flags == (bool(fp16), bool(bf16))),)


def _same(*values: Any) -> Tuple[Any, ...]:
    return values


Entry = Tuple[Tuple[str, ...], Tuple[str, ...], Callable[..., Tuple[Any, ...]], Callable[..., Tuple[Any, ...]]]

#: (recipe key, fairseq key) pairs whose value is the same on both sides
SAME_VALUE = [
    ("dataset.train_split", "dataset.train_subset"),
    ("dataset.valid_split", "dataset.valid_subset"),
    ("dataset.min_audio_len", "task.min_sample_size"),
    ("dataset.max_audio_len", "task.max_sample_size"),
    ("dataset.max_num_elements", "dataset.max_tokens"),
    ("dataset.max_num_elements", "dataset.max_tokens_valid"),
    ("dataset.normalize_audio", "task.normalize"),
    ("dataset.npc", "dataset.num_workers"),
    ("optimizer.config.eps", "optimizer.adam_eps"),
    ("optimizer.config.weight_decay", "optimizer.weight_decay"),
    ("trainer.freeze_encoder_for_n_steps", "model.freeze_finetune_updates"),
    ("regime.num_steps", "optimization.max_update"),
    ("regime.validate_after_n_steps", "dataset.validate_after_updates"),
    ("regime.validate_every_n_steps", "dataset.validate_interval_updates"),
    ("regime.checkpoint_every_n_steps", "checkpoint.save_interval_updates"),
    ("regime.publish_metrics_every_n_steps", "common.log_interval"),
    ("common.seed", "common.seed"),
]

#: (recipe keys, fairseq keys, recipe values → fairseq values, fairseq values → recipe values)
MAPPING: List[Entry] = [((recipe,), (fairseq,), _same, _same) for recipe, fairseq in SAME_VALUE] + [
    (("optimizer.config.lr",), ("optimization.lr",), lambda lr: ([lr],), lambda lrs: (lrs[0],)),
    (("optimizer.config.betas",), ("optimizer.adam_betas",),
     lambda b: (f"({b[0]},{b[1]})",), lambda s: ([float(x) for x in s.strip("()").split(",")],)),
    (("trainer.mixed_precision.dtype",), ("common.fp16", "common.bf16"), _dtype_to_fs, _dtype_from_fs),
    (("evaluator.amp", "evaluator.amp_dtype"), ("common.fp16", "common.bf16"),
     lambda amp, dtype: _dtype_to_fs(dtype if amp else "torch.float32"),
     lambda fp16, bf16: (fp16 or bf16, _dtype_from_fs(fp16, bf16)[0] if fp16 or bf16 else "torch.float16")),
    (("trainer.grad_accumulation.num_batches",), ("optimization.update_freq",), lambda n: ([n],), lambda f: (f[0],)),
    (("regime.keep_last_n_checkpoints",), ("checkpoint.keep_interval_updates",),
     lambda n: (-1 if n is None else n,), lambda n: (None if n < 0 else n,)),
    (("regime.score_metric",), ("checkpoint.best_checkpoint_metric",),
     lambda m: (m or "loss",), lambda m: (None if m == "loss" else m,)),
    (("loss.diversity_loss_weight", "loss.feature_penalty_weight"), ("criterion.loss_weights",),
     lambda d, f: ([d, f],), lambda w: (w[0], w[1])),
]

#: what every recipe run sets that no recipe key names (the equivalent fairseq yaml holds the same)
FIXED = {
    "ssl": {"task": {"_name": "audio_pretraining"},
            "criterion": {"_name": "wav2vec", "infonce": True, "log_keys": ["prob_perplexity", "code_perplexity",
                                                                           "temp"]},
            "optimizer": {"_name": "adam"}},
    "asr": {"task": {"_name": "audio_finetuning", "labels": "ltr"},
            "criterion": {"_name": "ctc", "zero_infinity": True, "post_process": "letter"},
            "optimization": {"sentence_avg": True},
            "optimizer": {"_name": "adam"}},
}
_RUN = {"common": {"log_format": "json", "tensorboard_logdir": None},
        "checkpoint": {"no_epoch_checkpoints": True, "save_interval": 1000},
        "dataset": {"skip_invalid_size_inputs_valid_test": True, "validate_interval": 1000}}
#: fairseq2's ASR arch names → the model section of fairseq's fine-tuning yaml of the same name
ASR_ARCHS = {"base_10h": {"apply_mask": True, "mask_prob": 0.65, "mask_channel_prob": 0.5, "mask_channel_length": 64,
                          "layerdrop": 0.05, "activation_dropout": 0.1, "feature_grad_mult": 0.0}}
SSL_ARCHS = ("base", "large")
MODEL_NAMES = {"ssl": "wav2vec2", "asr": "wav2vec_ctc"}


def model_section(kind: str, recipe: dict) -> dict:
    """The fairseq ``model`` group of ``model.arch`` (fairseq's preset of that name) with ``config_overrides``."""
    import yaml

    arch = recipe["model"]["arch"]
    if kind == "ssl":
        if arch not in SSL_ARCHS:
            raise ConfigError(f"model.arch '{arch}' is not a wav2vec2 arch here: use one of {', '.join(SSL_ARCHS)}")
        preset = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "model",
                              "wav2vec2", f"wav2vec2_{arch}.yaml")
        with open(preset, encoding="utf-8") as f:
            model = yaml.safe_load(f)
    else:
        if arch not in ASR_ARCHS:
            raise ConfigError(f"model.arch '{arch}' is not a wav2vec2_asr arch here: use one of {', '.join(ASR_ARCHS)}")
        model = {"_name": MODEL_NAMES[kind], **ASR_ARCHS[arch]}
    return {**model, **fairseq_model_overrides(recipe["model"]["config_overrides"])}


def _lr_scheduler(recipe: dict) -> dict:
    name = recipe["lr_scheduler"]["name"]
    if name not in LR_SCHEDULERS:
        raise ConfigError(f"lr_scheduler.name '{name}' is not supported: use one of {', '.join(LR_SCHEDULERS)}")
    fields = LR_SCHEDULERS[name]
    section = {"_name": name}
    for key, value in recipe["lr_scheduler"]["config"].items():
        if key not in fields:
            raise ConfigError(f"unknown recipe key 'lr_scheduler.config.{key}' for {name}: "
                              f"known keys: {', '.join(fields)}")
        section[fields[key][0]] = value
    return section


def recipe_to_fairseq(kind: str, recipe: dict, data: str, save_dir: str, log_file: Optional[str] = None,
                      w2v_path: Optional[str] = None) -> dict:
    """The fairseq config (a plain dict, as a fairseq yaml) that runs the training recipe ``kind`` on the
    manifests in ``data``, writing checkpoints into ``save_dir``."""
    if recipe["optimizer"]["name"] != "adamw":
        raise ConfigError(f"optimizer.name '{recipe['optimizer']['name']}' is not supported: use adamw "
                          "(fairseq's adam, which decays weights as AdamW)")
    cfg = copy.deepcopy(FIXED[kind])
    for group, values in _RUN.items():
        cfg.setdefault(group, {}).update(values)
    cfg["model"] = model_section(kind, recipe)
    cfg["lr_scheduler"] = _lr_scheduler(recipe)
    apply_mapping(recipe, cfg)
    cfg["task"]["data"] = data
    cfg["checkpoint"]["save_dir"] = save_dir
    cfg["common"]["log_file"] = log_file
    if kind == "asr":
        cfg["model"]["w2v_path"] = w2v_path
    return cfg


def apply_mapping(recipe: dict, cfg: dict) -> None:
    """Set, in ``cfg``, the fairseq value of every MAPPING entry whose recipe keys ``recipe`` has."""
    for recipe_keys, fs_keys, to_fs, _ in MAPPING:
        if not all(_has(recipe, key) for key in recipe_keys):
            continue
        for key, value in zip(fs_keys, to_fs(*[_get(recipe, key) for key in recipe_keys])):
            _set(cfg, key, value)


def _has(tree: dict, dotted: str) -> bool:
    return _get(tree, dotted, _MISSING) is not _MISSING


_MISSING = object()


def fairseq_to_recipe(kind: str, cfg: Any) -> dict:
    """The recipe values that a FairseqConfig (or its dict) holds, for every MAPPING key of recipe ``kind``;
    lr_scheduler.config and model.config_overrides are left out (they have no one-to-one inverse)."""
    from fairseq_lite.dataclass.utils import config_to_dict

    tree = cfg if isinstance(cfg, dict) else config_to_dict(cfg)
    recipe: dict = {}
    for recipe_keys, fs_keys, _, from_fs in MAPPING:
        if not all(_has(DEFAULTS[kind], key) for key in recipe_keys):
            continue
        for key, value in zip(recipe_keys, from_fs(*[_get(tree, key) for key in fs_keys])):
            _set(recipe, key, value)
    return recipe
