"""fairseq's checkpoint API, with its function names and signatures (``fairseq.checkpoint_utils``).

::

    from fairseq_lite import checkpoint_utils
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(["/path/to/wav2vec_small.pt"])
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from fairseq_lite.dataclass.configs import FairseqConfig
from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.errors import CheckpointError
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu, overwrite_args_by_name  # noqa: F401


def checkpoint_with_suffix(filename: str, suffix: str) -> str:
    """``filename`` with ``checkpoint.checkpoint_suffix`` before ``.pt``, as fairseq names suffixed files."""
    return filename.replace(".pt", suffix + ".pt") if suffix else filename


def load_model_ensemble_and_task(
    filenames: Sequence[str],
    arg_overrides: Optional[Dict[str, Any]] = None,
    task: Any = None,
    strict: bool = True,
    suffix: str = "",
    num_shards: int = 1,
    state: Optional[Dict[str, Any]] = None,
    trust_checkpoint: bool = False,
) -> Tuple[List[Any], FairseqConfig, Any]:
    """Load each checkpoint's model (and the task of the first) as fairseq does; returns (models, cfg, task).

    The task is rebuilt from the checkpoint unless given (pass an ``audio_finetuning`` task for CTC files saved
    with ``audio_pretraining``, as infer.py does); stale config keys are dropped with one warning.
    """
    from fairseq_lite.tasks import setup_task

    if isinstance(filenames, (str, bytes)) or not all(isinstance(f, str) for f in filenames):
        raise CheckpointError("load_model_ensemble_and_task takes a list of checkpoint paths, e.g. ['/path/model.pt']")
    if num_shards != 1:
        raise CheckpointError("sharded checkpoints (num_shards > 1) are not supported")
    models, cfg = [], None
    for filename in filenames:
        filename = checkpoint_with_suffix(filename, suffix)
        loaded = state if state is not None else load_checkpoint_to_cpu(filename, arg_overrides,
                                                                         trust_checkpoint=trust_checkpoint)
        cfg = finalize_config(loaded["cfg"], from_checkpoint=True)
        if task is None:
            task = setup_task(cfg.task, from_checkpoint=True)
        if loaded.get("task_state"):
            task.load_state_dict(loaded["task_state"])
        model = task.build_model(cfg.model, from_checkpoint=True)
        model.set_num_updates(loaded["optimizer_history"][-1].get("num_updates", 0))
        model.load_state_dict(loaded["model"], strict=strict, model_cfg=cfg.model)
        models.append(model)
    return models, cfg, task


def load_model_ensemble(filenames: Sequence[str], arg_overrides: Optional[Dict[str, Any]] = None, task: Any = None,
                        strict: bool = True, **kwargs: Any) -> Tuple[List[Any], FairseqConfig]:
    """fairseq's ``load_model_ensemble``: the models and the config, without the task."""
    models, cfg, _ = load_model_ensemble_and_task(filenames, arg_overrides, task, strict, **kwargs)
    return models, cfg
