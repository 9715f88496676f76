"""HuBERT: the ``hubert`` pretraining model and the ``hubert_ctc`` fine-tuning model."""

import os

from fairseq_lite.registry import import_all_modules

import_all_modules(__name__, os.path.dirname(__file__))
