"""fairseq's configuration dataclasses (``fairseq/dataclass/configs.py``) with its names and defaults.

Every field uses ``field(default_factory=...)`` for mutable defaults (Python 3.11 rejects fairseq's
instance defaults). Interpolation defaults (``II("common.fp16")``) are resolved once, when the whole
config is finalised (``fairseq_lite.dataclass.initialize.finalize_config``).
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field
from typing import Any, List, Optional

from fairseq_lite.dataclass.constants import (
    DDP_BACKEND_CHOICES,
    LOG_FORMAT_CHOICES,
    ZERO_SHARDING_CHOICES,
)
from fairseq_lite.dataclass.utils import II
from fairseq_lite.errors import ConfigError


def help_text(text: str, **extra) -> dict:
    """A dataclass field's ``metadata``: its ``--help`` text for the legacy CLI (fairseq's ``metadata={"help": ...}``)."""
    return {"help": text, **extra}


def field_like(config_class: type, name: str, **changes: Any) -> Any:
    """A dataclass field with the default and help text of ``config_class``'s field ``name`` (``default=`` in
    ``changes`` replaces the default): for configs that repeat another's options, as HuBERT's repeats
    wav2vec 2.0's."""
    source = config_class.__dataclass_fields__[name]
    if "default" in changes:
        return field(default=changes["default"], metadata=dict(source.metadata))
    if source.default_factory is not MISSING:
        return field(default_factory=source.default_factory, metadata=dict(source.metadata))
    return field(default=source.default, metadata=dict(source.metadata))


@dataclass
class FairseqDataclass:
    """Base of every registered config; ``_name`` holds the registry name it was built for."""

    _name: Optional[str] = None

    @classmethod
    def name(cls) -> Optional[str]:
        return cls._name

    def check_values(self, cfg: Any) -> None:
        """Checks of this component's values against the whole config ``cfg``, made when the config is read
        (``check_config_values``); raise a ConfigError naming the key. Nothing to check by default."""


@dataclass
class CommonConfig(FairseqDataclass):
    no_progress_bar: bool = field(default=False, metadata=help_text("disable progress bar"))
    log_interval: int = field(default=100, metadata=help_text("log progress every N batches (when progress bar is disabled)"))
    log_format: Optional[LOG_FORMAT_CHOICES] = field(default=None, metadata=help_text("log format to use"))
    log_file: Optional[str] = field(default=None, metadata=help_text("log file to copy metrics to"))
    aim_repo: Optional[str] = field(default=None, metadata=help_text("path to Aim repository"))
    aim_run_hash: Optional[str] = field(default=None, metadata=help_text("Aim run hash"))
    tensorboard_logdir: Optional[str] = field(default=None, metadata=help_text("path to save logs for tensorboard"))
    wandb_project: Optional[str] = field(default=None, metadata=help_text("Weights and Biases project name"))
    azureml_logging: bool = field(default=False, metadata=help_text("log to Azure ML"))
    seed: int = field(default=1, metadata=help_text("pseudo random number generator seed"))
    cpu: bool = field(default=False, metadata=help_text("use CPU instead of CUDA"))
    tpu: bool = field(default=False, metadata=help_text("use TPU instead of CUDA"))
    bf16: bool = field(default=False, metadata=help_text("use bfloat16"))
    memory_efficient_bf16: bool = field(default=False, metadata=help_text("use a memory-efficient version of BF16 training"))
    fp16: bool = field(default=False, metadata=help_text("use FP16"))
    memory_efficient_fp16: bool = field(default=False, metadata=help_text("use a memory-efficient version of FP16 training"))
    fp16_no_flatten_grads: bool = field(default=False, metadata=help_text("don't flatten FP16 grads tensor"))
    fp16_init_scale: int = field(default=2**7, metadata=help_text("default FP16 loss scale"))
    fp16_scale_window: Optional[int] = field(default=None, metadata=help_text("number of updates before increasing loss scale"))
    fp16_scale_tolerance: float = field(default=0.0, metadata=help_text("pct of updates that can overflow before decreasing the loss scale"))
    on_cpu_convert_precision: bool = field(default=False, metadata=help_text("convert precision on CPU"))
    min_loss_scale: float = field(default=1e-4, metadata=help_text("minimum FP16/AMP loss scale, after which training is stopped"))
    threshold_loss_scale: Optional[float] = field(default=None, metadata=help_text("threshold FP16 loss scale from below"))
    amp: bool = field(default=False, metadata=help_text("use automatic mixed precision"))
    amp_batch_retries: int = field(default=2, metadata=help_text("retries of the same batch after an AMP overflow"))
    amp_init_scale: int = field(default=2**7, metadata=help_text("default AMP loss scale"))
    amp_scale_window: Optional[int] = field(default=None, metadata=help_text("updates before increasing the AMP loss scale"))
    user_dir: Optional[str] = field(default=None, metadata=help_text("path to a python module containing custom extensions"))
    empty_cache_freq: int = field(default=0, metadata=help_text("how often to clear the PyTorch CUDA cache (0 to disable)"))
    all_gather_list_size: int = field(default=16384, metadata=help_text("number of bytes reserved for gathering stats from workers"))
    model_parallel_size: int = field(default=1, metadata=help_text("total number of GPUs to parallelize model over"))
    quantization_config_path: Optional[str] = field(default=None, metadata=help_text("path to quantization config file"))
    profile: bool = field(default=False, metadata=help_text("enable autograd profiler emit_nvtx"))
    reset_logging: bool = field(default=False, metadata=help_text("when using Hydra, reset the logging at the beginning of training"))
    suppress_crashes: bool = field(default=False, metadata=help_text("suppress crashes when training with the hydra_train entry point"))
    use_plasma_view: bool = field(default=False, metadata=help_text("store indices and sizes in shared memory"))
    plasma_path: Optional[str] = field(default="/tmp/plasma", metadata=help_text("path to run plasma_store"))
    compile: bool = field(default=False, metadata=help_text(
        "fairseq_lite: torch.compile the model's tensor code in place for training (same results and keys)"))
    seed_per_batch: bool = field(default=False, metadata=help_text(
        "fairseq_lite: seed the random draws of each micro-batch (masks, negatives, dropout, layerdrop) from "
        "(seed, update, the batch's example ids) instead of once per update, so that N ranks train exactly as "
        "one process with update_freq N on the same batches"))


@dataclass
class CommonEvalConfig(FairseqDataclass):
    path: Optional[str] = field(default=None, metadata=help_text("path(s) to model file(s), colon separated"))
    post_process: Optional[str] = field(
        default=None,
        metadata=help_text("post-process text by removing BPE, letter segmentation, etc.", argparse_alias="--remove-bpe"),
    )
    quiet: bool = field(default=False, metadata=help_text("only print final scores"))
    model_overrides: str = field(default="{}", metadata=help_text("a dictionary used to override model args at generation"))
    results_path: Optional[str] = field(default=None, metadata=help_text("path to save eval results (optional)"))


@dataclass
class DistributedTrainingConfig(FairseqDataclass):
    distributed_world_size: int = field(
        default_factory=lambda: max(1, _cuda_device_count()),
        metadata=help_text("total number of GPUs across all nodes (default: all visible GPUs)"),
    )
    distributed_num_procs: Optional[int] = field(
        default_factory=lambda: max(1, _cuda_device_count()),
        metadata=help_text("total number of processes to fork (default: all visible GPUs)"),
    )
    distributed_rank: Optional[int] = field(default=0, metadata=help_text("rank of the current worker"))
    distributed_backend: str = field(default="nccl", metadata=help_text("distributed backend"))
    distributed_init_method: Optional[str] = field(default=None, metadata=help_text("typically tcp://hostname:port"))
    distributed_port: int = field(default=-1, metadata=help_text("port number (not required if using --distributed-init-method)"))
    device_id: int = field(
        default_factory=lambda: int(os.environ.get("LOCAL_RANK", 0)),
        metadata=help_text("which GPU to use (by default looks for $LOCAL_RANK)", argparse_alias="--local_rank"),
    )
    distributed_no_spawn: bool = field(default=False, metadata=help_text("do not spawn multiple processes even if multiple GPUs are visible"))
    ddp_backend: DDP_BACKEND_CHOICES = field(default="pytorch_ddp", metadata=help_text("DistributedDataParallel backend"))
    ddp_comm_hook: str = field(default="none", metadata=help_text("communication hook"))
    bucket_cap_mb: int = field(default=25, metadata=help_text("bucket size for reduction"))
    fix_batches_to_gpus: bool = field(default=False, metadata=help_text("don't shuffle batches between GPUs"))
    find_unused_parameters: bool = field(default=False, metadata=help_text("disable unused parameter detection"))
    gradient_as_bucket_view: bool = field(default=False, metadata=help_text("gradients as views of DDP buckets"))
    fast_stat_sync: bool = field(default=False, metadata=help_text("[deprecated] this is now defined per Criterion"))
    heartbeat_timeout: int = field(default=-1, metadata=help_text("kill the job if no progress is made in N seconds"))
    broadcast_buffers: bool = field(default=False, metadata=help_text("copy non-trainable parameters between GPUs"))
    slowmo_momentum: Optional[float] = field(default=None, metadata=help_text("SlowMo momentum term"))
    slowmo_base_algorithm: str = field(default="localsgd", metadata=help_text("SlowMo base algorithm"))
    localsgd_frequency: int = field(default=3, metadata=help_text("Local SGD allreduce frequency"))
    nprocs_per_node: int = field(
        default_factory=lambda: max(1, _cuda_device_count()),
        metadata=help_text("number of GPUs in each node"),
    )
    pipeline_model_parallel: bool = field(default=False, metadata=help_text("if set, use pipeline model parallelism"))
    zero_sharding: ZERO_SHARDING_CHOICES = field(default="none", metadata=help_text("ZeRO sharding"))
    fp16: bool = II("common.fp16")
    memory_efficient_fp16: bool = II("common.memory_efficient_fp16")
    tpu: bool = II("common.tpu")
    no_reshard_after_forward: bool = field(default=False, metadata=help_text("FSDP: don't reshard parameters after forward"))
    fp32_reduce_scatter: bool = field(default=False, metadata=help_text("FSDP: reduce-scatter in FP32"))
    cpu_offload: bool = field(default=False, metadata=help_text("FSDP: offload FP32 params to CPU"))
    use_sharded_state: bool = field(default=False, metadata=help_text("FSDP: use sharded checkpoint files"))
    not_fsdp_flatten_parameters: bool = field(default=False, metadata=help_text("FSDP: don't flatten parameters"))


@dataclass
class DatasetConfig(FairseqDataclass):
    num_workers: int = field(default=1, metadata=help_text("how many subprocesses to use for data loading"))
    skip_invalid_size_inputs_valid_test: bool = field(default=False, metadata=help_text("ignore too long or too short lines in valid and test set"))
    max_tokens: Optional[int] = field(default=None, metadata=help_text("maximum number of tokens in a batch"))
    batch_size: Optional[int] = field(
        default=None, metadata=help_text("number of examples in a batch", argparse_alias="--max-sentences")
    )
    required_batch_size_multiple: int = field(default=8, metadata=help_text("batch size will be a multiplier of this value"))
    required_seq_len_multiple: int = field(default=1, metadata=help_text("maximum sequence length in batch will be a multiplier of this value"))
    dataset_impl: Optional[str] = field(default=None, metadata=help_text("output dataset implementation"))
    data_buffer_size: int = field(default=10, metadata=help_text("number of batches to preload"))
    train_subset: str = field(default="train", metadata=help_text("data subset to use for training (e.g. train, valid, test)"))
    valid_subset: str = field(default="valid", metadata=help_text("comma separated list of data subsets to use for validation"))
    combine_valid_subsets: Optional[bool] = field(default=None, metadata=help_text("comma separated list of data subsets to use for validation"))
    ignore_unused_valid_subsets: Optional[bool] = field(default=False, metadata=help_text("do not raise error if valid subsets are ignored"))
    validate_interval: int = field(default=1, metadata=help_text("validate every N epochs"))
    validate_interval_updates: int = field(default=0, metadata=help_text("validate every N updates"))
    validate_after_updates: int = field(default=0, metadata=help_text("dont validate until reaching this many updates"))
    fixed_validation_seed: Optional[int] = field(default=None, metadata=help_text("specified random seed for validation"))
    disable_validation: bool = field(default=False, metadata=help_text("disable validation"))
    max_tokens_valid: Optional[int] = II("dataset.max_tokens")
    batch_size_valid: Optional[int] = II("dataset.batch_size")
    max_valid_steps: Optional[int] = field(default=None, metadata=help_text("how many batches to evaluate", argparse_alias="--nval"))
    curriculum: int = field(default=0, metadata=help_text("don't shuffle batches for first N epochs"))
    gen_subset: str = field(default="test", metadata=help_text("data subset to generate (train, valid, test)"))
    num_shards: int = field(default=1, metadata=help_text("shard generation over N shards"))
    shard_id: int = field(default=0, metadata=help_text("id of the shard to generate (id < num_shards)"))
    grouped_shuffling: bool = field(default=False, metadata=help_text("shuffle batches in groups of num_shards"))
    update_epoch_batch_itr: bool = II("dataset.grouped_shuffling")
    update_ordered_indices_seed: bool = field(default=False, metadata=help_text("seed the ordered indices with the epoch"))


@dataclass
class OptimizationConfig(FairseqDataclass):
    max_epoch: int = field(default=0, metadata=help_text("force stop training at specified epoch"))
    max_update: int = field(default=0, metadata=help_text("force stop training at specified update"))
    stop_time_hours: float = field(default=0, metadata=help_text("force stop training after specified cumulative time (if >0)"))
    clip_norm: float = field(default=0.0, metadata=help_text("clip threshold of gradients"))
    sentence_avg: bool = field(default=False, metadata=help_text("normalize gradients by the number of sentences in a batch (default is to normalize by number of tokens)"))
    update_freq: List[int] = field(default_factory=lambda: [1], metadata=help_text("update parameters every N_i batches, when in epoch i"))
    lr: List[float] = field(default_factory=lambda: [0.25], metadata=help_text("learning rate for the first N epochs; all epochs >N using LR_N"))
    stop_min_lr: float = field(
        default=-1.0, metadata=help_text("stop training when the learning rate reaches this minimum", argparse_alias="--min-lr")
    )
    use_bmuf: bool = field(default=False, metadata=help_text("specify global optimizer for syncing models on different GPUs/shards"))
    skip_remainder_batch: Optional[bool] = field(default=False, metadata=help_text("if set, include the last (partial) batch of each epoch in training"))
    debug_param_names: bool = False


@dataclass
class CheckpointConfig(FairseqDataclass):
    save_dir: str = field(default="checkpoints", metadata=help_text("path to save checkpoints"))
    restore_file: str = field(default="checkpoint_last.pt", metadata=help_text("filename from which to load checkpoint (default: <save-dir>/checkpoint_last.pt"))
    continue_once: Optional[str] = field(default=None, metadata=help_text("continue from this checkpoint, unless a checkpoint indicated in 'restore_file' exists"))
    finetune_from_model: Optional[str] = field(default=None, metadata=help_text("finetune from a pretrained model; resets optimizer, lr scheduler, meters and dataloader"))
    reset_dataloader: bool = field(default=False, metadata=help_text("if set, does not reload dataloader state from the checkpoint"))
    reset_lr_scheduler: bool = field(default=False, metadata=help_text("if set, does not load lr scheduler state from the checkpoint"))
    reset_meters: bool = field(default=False, metadata=help_text("if set, does not load meters from the checkpoint"))
    reset_optimizer: bool = field(default=False, metadata=help_text("if set, does not load optimizer state from the checkpoint"))
    optimizer_overrides: str = field(default="{}", metadata=help_text("a dictionary used to override optimizer args when loading a checkpoint"))
    save_interval: int = field(default=1, metadata=help_text("save a checkpoint every N epochs"))
    save_interval_updates: int = field(default=0, metadata=help_text("save a checkpoint (and validate) every N updates"))
    keep_interval_updates: int = field(default=-1, metadata=help_text("keep the last N checkpoints saved with --save-interval-updates"))
    keep_interval_updates_pattern: int = field(default=-1, metadata=help_text("when used with --keep-interval-updates, skip deleting any checkpoints with update X where X %% keep_interval_updates_pattern == 0"))
    keep_last_epochs: int = field(default=-1, metadata=help_text("keep last N epoch checkpoints"))
    keep_best_checkpoints: int = field(default=-1, metadata=help_text("keep best N checkpoints based on scores"))
    no_save: bool = field(default=False, metadata=help_text("don't save models or checkpoints"))
    no_epoch_checkpoints: bool = field(default=False, metadata=help_text("only store last and best checkpoints"))
    no_last_checkpoints: bool = field(default=False, metadata=help_text("don't store last checkpoints"))
    no_save_optimizer_state: bool = field(default=False, metadata=help_text("don't save optimizer-state as part of checkpoint"))
    best_checkpoint_metric: str = field(default="loss", metadata=help_text('metric to use for saving "best" checkpoints'))
    maximize_best_checkpoint_metric: bool = field(default=False, metadata=help_text('select the largest metric value for saving "best" checkpoints'))
    patience: int = field(default=-1, metadata=help_text("early stop training if valid performance doesn't improve for N consecutive validation runs"))
    checkpoint_suffix: str = field(default="", metadata=help_text("suffix to add to the checkpoint file name"))
    checkpoint_shard_count: int = field(default=1, metadata=help_text("number of shards containing the checkpoint"))
    load_checkpoint_on_all_dp_ranks: bool = field(default=False, metadata=help_text("load checkpoints on all data parallel devices"))
    write_checkpoints_asynchronously: bool = field(default=False, metadata=help_text("write checkpoints asynchronously in a separate thread"))
    model_parallel_size: int = II("common.model_parallel_size")


@dataclass
class GenerationConfig(FairseqDataclass):
    beam: int = field(default=5, metadata=help_text("beam size"))
    beam_mt: int = field(default=0, metadata=help_text("beam size for the first-pass decoder"))
    nbest: int = field(default=1, metadata=help_text("number of hypotheses to output"))
    max_len_a: float = field(default=0, metadata=help_text("generate sequences of maximum length ax + b"))
    max_len_b: int = field(default=200, metadata=help_text("generate sequences of maximum length ax + b"))
    min_len: int = field(default=1, metadata=help_text("minimum generation length"))
    match_source_len: bool = field(default=False, metadata=help_text("generations should match the source length"))
    unnormalized: bool = field(default=False, metadata=help_text("compare unnormalized hypothesis scores"))
    no_early_stop: bool = field(default=False, metadata=help_text("deprecated"))
    no_beamable_mm: bool = field(default=False, metadata=help_text("don't use BeamableMM in attention layers"))
    lenpen: float = field(default=1, metadata=help_text("length penalty"))
    unkpen: float = field(default=0, metadata=help_text("unknown word penalty"))
    replace_unk: Optional[str] = field(default=None, metadata=help_text("perform unknown replacement"))
    sacrebleu: bool = field(default=False, metadata=help_text("score with sacrebleu"))
    score_reference: bool = field(default=False, metadata=help_text("just score the reference translation"))
    prefix_size: int = field(default=0, metadata=help_text("initialize generation by target prefix of given length"))
    no_repeat_ngram_size: int = field(default=0, metadata=help_text("ngram blocking"))
    sampling: bool = field(default=False, metadata=help_text("sample hypotheses instead of using beam search"))
    sampling_topk: int = field(default=-1, metadata=help_text("sample from top K likely next words instead of all words"))
    sampling_topp: float = field(default=-1.0, metadata=help_text("sample from the smallest set whose cumulative probability mass exceeds p"))
    temperature: float = field(default=1.0, metadata=help_text("temperature for generation"))
    diverse_beam_groups: int = field(default=-1, metadata=help_text("number of groups for Diverse Beam Search"))
    diverse_beam_strength: float = field(default=0.5, metadata=help_text("strength of diversity penalty for Diverse Beam Search"))
    diversity_rate: float = field(default=-1.0, metadata=help_text("strength of diversity penalty for Diverse Siblings Search"))
    print_alignment: Optional[str] = field(default=None, metadata=help_text("print alignment"))
    print_step: bool = field(default=False, metadata=help_text("print steps"))
    lm_path: Optional[str] = field(default=None, metadata=help_text("path to lm checkpoint for lm fusion"))
    lm_weight: float = field(default=0.0, metadata=help_text("weight for lm probs for lm fusion"))
    iter_decode_eos_penalty: float = field(default=0.0, metadata=help_text("iterative refinement eos penalty"))
    iter_decode_max_iter: int = field(default=10, metadata=help_text("iterative refinement max iterations"))
    iter_decode_force_max_iter: bool = field(default=False, metadata=help_text("iterative refinement: force max iterations"))
    iter_decode_with_beam: int = field(default=1, metadata=help_text("iterative refinement beam"))
    iter_decode_with_external_reranker: bool = field(default=False, metadata=help_text("iterative refinement reranker"))
    retain_iter_history: bool = field(default=False, metadata=help_text("retain iterative refinement history"))
    retain_dropout: bool = field(default=False, metadata=help_text("use dropout at inference time"))
    retain_dropout_modules: Any = field(default=None, metadata=help_text("modules to retain dropout in"))
    decoding_format: Optional[str] = field(default=None, metadata=help_text("special decoding format"))
    no_seed_provided: bool = field(default=False, metadata=help_text("if set, dont use seed for initializing random generators"))
    eos_token: Optional[str] = field(default=None, metadata=help_text("EOS token"))


#: The groups with a fixed type, in fairseq's order; the rest of FairseqConfig is filled from registries.
TYPED_GROUPS = (
    "common",
    "common_eval",
    "distributed_training",
    "dataset",
    "optimization",
    "checkpoint",
    "generation",
)

#: The ``Any``-typed groups whose content is selected by ``_name`` from a registry of the same kind.
REGISTRY_GROUPS = ("task", "model", "criterion", "optimizer", "lr_scheduler")


@dataclass
class FairseqConfig(FairseqDataclass):
    """The whole training configuration, as fairseq's ``FairseqConfig``."""

    common: CommonConfig = field(default_factory=CommonConfig)
    common_eval: CommonEvalConfig = field(default_factory=CommonEvalConfig)
    distributed_training: DistributedTrainingConfig = field(default_factory=DistributedTrainingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    task: Any = None
    model: Any = None
    criterion: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    scoring: Any = None
    bpe: Any = None
    tokenizer: Any = None


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch always present in practice
        return 0


def check_config_values(cfg: FairseqConfig) -> None:
    """Values that would otherwise fail deep in data loading or model building, checked when a config is read
    (``finalize_config``, before anything is built): the ``dataset`` group here, each selected component's own
    values through its ``check_values``. Each failure is a ConfigError naming the key."""
    num_workers = cfg.dataset.num_workers
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"dataset.num_workers={num_workers} must be 0 (load data in the training process) or a "
                          "positive number of DataLoader worker processes")
    for group in REGISTRY_GROUPS:
        node = getattr(cfg, group, None)
        if isinstance(node, FairseqDataclass):
            node.check_values(cfg)
