"""wav2vec 1.0 / vq-wav2vec, wav2vec 2.0 and the CTC fine-tuning model."""

import os

from fairseq_lite.registry import import_all_modules

import_all_modules(__name__, os.path.dirname(__file__))
