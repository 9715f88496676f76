"""Task registry (``audio_pretraining``, ``audio_finetuning``, ...) and ``setup_task``."""

import os

from fairseq_lite.registry import Registry, import_all_modules
from fairseq_lite.tasks.fairseq_task import FairseqTask

TASK_REGISTRY = Registry("task", base_class=FairseqTask)
register_task = TASK_REGISTRY.register


def setup_task(cfg, from_checkpoint: bool = False, **kwargs) -> FairseqTask:
    """Build the task ``cfg`` selects (fairseq's ``tasks.setup_task``)."""
    config = TASK_REGISTRY.build_config(cfg, from_checkpoint=from_checkpoint)
    return TASK_REGISTRY.get_class(config._name).setup_task(config, **kwargs)


import_all_modules(__name__, os.path.dirname(__file__))
