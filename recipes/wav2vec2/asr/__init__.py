"""``python -m asr``: the wav2vec2 asr recipe (run from recipes/wav2vec2). Keep this file free of imports."""
