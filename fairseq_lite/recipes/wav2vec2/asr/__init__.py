"""wav2vec2 ASR (CTC) fine-tuning recipe (``python -m fairseq_lite.recipes.wav2vec2.asr``)."""
