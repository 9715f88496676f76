"""w2v-BERT 2.0: the ``w2v_bert`` model and the ``w2v_bert_ctc`` fine-tuning model."""

import os

from fairseq_lite.registry import import_all_modules

import_all_modules(__name__, os.path.dirname(__file__))
