"""The config fields that exist only so that fairseq's yaml files and checkpoints load: nothing reads them.

fairseq's ``FairseqConfig`` has options for machine translation, model parallelism, FSDP, BMUF, Aim/AzureML
logging and more. fairseq_lite keeps every one of them (a fairseq yaml that sets one must still load), lists
them here by the reason they do nothing, and warns once, naming them, when a config sets one to anything but
its default (``warn_inert_settings``, run by ``finalize_config`` for configs a user wrote, not for checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Tuple

logger = logging.getLogger(__name__)

#: Why a group of fields does nothing → the fields (``group.field`` of ``FairseqConfig``).
INERT_FIELDS: Dict[str, Tuple[str, ...]] = {
    "sequence generation for translation models (wav2vec decoding uses infer.py's own flags)": tuple(
        f"generation.{name}" for name in (
            "beam_mt", "max_len_a", "max_len_b", "min_len", "match_source_len", "unnormalized", "no_early_stop",
            "no_beamable_mm", "lenpen", "unkpen", "replace_unk", "sacrebleu", "score_reference", "prefix_size",
            "no_repeat_ngram_size", "sampling", "sampling_topk", "sampling_topp", "diverse_beam_groups",
            "diverse_beam_strength", "diversity_rate", "print_step", "lm_path", "iter_decode_eos_penalty",
            "iter_decode_max_iter", "iter_decode_force_max_iter", "iter_decode_with_beam",
            "iter_decode_with_external_reranker", "retain_iter_history", "retain_dropout", "retain_dropout_modules",
            "decoding_format", "no_seed_provided", "eos_token")),
    "model parallelism, sharded checkpoint files, SlowMo/LocalSGD and BMUF are not implemented": (
        "common.model_parallel_size", "checkpoint.model_parallel_size", "checkpoint.checkpoint_shard_count",
        "checkpoint.load_checkpoint_on_all_dp_ranks", "distributed_training.pipeline_model_parallel",
        "distributed_training.zero_sharding", "distributed_training.use_sharded_state", "distributed_training.not_fsdp_flatten_parameters",
        "distributed_training.slowmo_momentum", "distributed_training.slowmo_base_algorithm",
        "distributed_training.localsgd_frequency", "distributed_training.ddp_comm_hook",
        "distributed_training.distributed_num_procs", "distributed_training.nprocs_per_node",
        "distributed_training.fast_stat_sync", "distributed_training.heartbeat_timeout", "optimization.use_bmuf"),
    "fairseq's logging integrations, user plug-ins and CUDA housekeeping are not implemented": (
        "common.aim_repo", "common.aim_run_hash", "common.azureml_logging", "common.user_dir",
        "common.empty_cache_freq", "common.all_gather_list_size", "common.quantization_config_path",
        "common.profile", "common.reset_logging", "common.suppress_crashes", "common.fp16_no_flatten_grads",
        "common.on_cpu_convert_precision", "optimization.debug_param_names",
        "checkpoint.write_checkpoints_asynchronously"),
    "fairseq's multi-subset validation and epoch-iterator options are not implemented": (
        "dataset.combine_valid_subsets", "dataset.ignore_unused_valid_subsets", "dataset.update_epoch_batch_itr",
        "dataset.update_ordered_indices_seed"),
}


def inert_keys() -> List[str]:
    """Every inert field, ``group.field``."""
    return [key for keys in INERT_FIELDS.values() for key in keys]


def _default(cfg: Any, group_cls: type, name: str) -> Any:
    """The field's default; an interpolation default (``${common.model_parallel_size}``) is what it points at."""
    field = {f.name: f for f in dataclasses.fields(group_cls)}[name]
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(default, str) and default.startswith("${") and default.endswith("}"):
        group, key = default[2:-1].split(".")
        return getattr(getattr(cfg, group), key)
    return default


def warn_inert_settings(cfg: Any) -> List[str]:
    """Log one warning naming the inert fields ``cfg`` (a ``FairseqConfig``) sets to a non-default value;
    returns those ``group.field=value`` settings."""
    settings = []
    for reason, keys in INERT_FIELDS.items():
        for key in keys:
            group, name = key.split(".")
            node = getattr(cfg, group)
            value = getattr(node, name)
            if value != _default(cfg, type(node), name):
                settings.append((f"{key}={value!r}", reason))
    if settings:
        logger.warning("these options are accepted so that fairseq configs load, but do nothing in fairseq_lite: %s",
                       "; ".join(f"{setting} ({reason})" for setting, reason in settings))
    return [setting for setting, _ in settings]
