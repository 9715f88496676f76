"""Optimizer registry (``adam``) and, in ``lr_scheduler``, the LR-scheduler registry."""

import os

from fairseq_lite.registry import Registry, import_all_modules

OPTIMIZER_REGISTRY = Registry("optimizer")
register_optimizer = OPTIMIZER_REGISTRY.register


def build_optimizer(cfg, params, *extra, **kwargs):
    return OPTIMIZER_REGISTRY.build(cfg, params, *extra, **kwargs)


import_all_modules(__name__, os.path.dirname(__file__))
