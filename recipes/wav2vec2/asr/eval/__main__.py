"""``python -m asr.eval --config-file C.yaml OUTPUT_DIR`` from recipes/wav2vec2 (fairseq2's command); see recipe_shim.py."""

if __name__ == "__main__":
    from recipe_shim import run

    run("asr.eval")
