"""``python -m ssl``: the wav2vec2 ssl recipe (run from recipes/wav2vec2). Keep this file free of imports."""
