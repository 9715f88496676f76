"""Model registry (``wav2vec``, ``wav2vec2``, ``wav2vec_ctc``, ``transformer_lm``) and ``build_model``."""

import os

from fairseq_lite.models.fairseq_model import BaseFairseqModel
from fairseq_lite.registry import Registry, import_all_modules

MODEL_REGISTRY = Registry("model", base_class=BaseFairseqModel)
register_model = MODEL_REGISTRY.register
register_model_architecture = MODEL_REGISTRY.register_architecture


def build_model(cfg, task=None, from_checkpoint: bool = False) -> BaseFairseqModel:
    """Build the model ``cfg`` selects (by ``_name``, or ``arch`` in legacy configs)."""
    return MODEL_REGISTRY.build(cfg, task, from_checkpoint=from_checkpoint)


import_all_modules(__name__, os.path.dirname(__file__))
