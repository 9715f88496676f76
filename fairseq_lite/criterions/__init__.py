"""Criterion registry (``wav2vec``, ``ctc``, ...) and ``build_criterion``."""

import os

from fairseq_lite.criterions.fairseq_criterion import FairseqCriterion
from fairseq_lite.registry import Registry, import_all_modules

CRITERION_REGISTRY = Registry("criterion", base_class=FairseqCriterion)
register_criterion = CRITERION_REGISTRY.register


def build_criterion(cfg, task, from_checkpoint: bool = False) -> FairseqCriterion:
    return CRITERION_REGISTRY.build(cfg, task, from_checkpoint=from_checkpoint)


import_all_modules(__name__, os.path.dirname(__file__))
