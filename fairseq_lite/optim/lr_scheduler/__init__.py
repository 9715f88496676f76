"""LR-scheduler registry (``fixed``, ``polynomial_decay``, ``tri_stage``, ``cosine``)."""

import os

from fairseq_lite.registry import Registry, import_all_modules

LR_SCHEDULER_REGISTRY = Registry("lr_scheduler")
register_lr_scheduler = LR_SCHEDULER_REGISTRY.register


def build_lr_scheduler(cfg, optimizer, **kwargs):
    return LR_SCHEDULER_REGISTRY.build(cfg, optimizer, **kwargs)


import_all_modules(__name__, os.path.dirname(__file__))
