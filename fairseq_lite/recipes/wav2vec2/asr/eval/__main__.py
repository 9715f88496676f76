"""``python -m fairseq_lite.recipes.wav2vec2.asr.eval --config-file C.yaml OUTPUT_DIR`` (see fairseq_lite.recipes.cli)."""

from fairseq_lite.recipes.cli import cli_main

if __name__ == "__main__":
    cli_main("asr.eval")
