"""fairseq2-style wav2vec2 recipes: ``ssl`` (pretraining) and ``asr`` (CTC fine-tuning), each with ``.eval``."""
