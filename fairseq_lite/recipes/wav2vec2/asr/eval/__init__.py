"""wav2vec2 ASR evaluation recipe (``python -m fairseq_lite.recipes.wav2vec2.asr.eval``)."""
