"""wav2vec2 self-supervised pretraining recipe (``python -m fairseq_lite.recipes.wav2vec2.ssl``)."""
