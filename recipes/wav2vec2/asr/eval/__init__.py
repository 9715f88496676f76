"""``python -m asr.eval``: the wav2vec2 asr evaluation recipe. Keep this file free of imports."""
