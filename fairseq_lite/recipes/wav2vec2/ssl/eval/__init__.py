"""wav2vec2 SSL evaluation recipe (``python -m fairseq_lite.recipes.wav2vec2.ssl.eval``)."""
