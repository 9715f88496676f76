"""``python -m ssl.eval``: the wav2vec2 ssl evaluation recipe. Keep this file free of imports."""
