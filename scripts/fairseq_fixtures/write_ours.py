"""Step 1 of the other direction: fairseq_lite writes small checkpoints for genuine fairseq to read.

Run with the project's venv (``.venv/bin/python scripts/fairseq_fixtures/write_ours.py``). Each fixture is
trained for two updates by fairseq_lite's own commands, as a user runs them (``fairseq-hydra-train`` on
fairseq's yaml recipes with tiny-size overrides, ``fairseq-train`` flags for wav2vec 1.0, vq-wav2vec and the
transformer LM), and lands in ``tests/fixtures/fairseq_lite_written/<name>/`` as ``checkpoint.pt`` plus
``inputs.npz`` (the fixed inputs the reader runs the model on). Step 2 is ``read_ours.py`` in the
genuine-fairseq venv; ``make.py`` runs both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "fairseq_lite_written")
RATE = 16_000
LETTERS = "|EATONS"

#: A tiny transformer encoder: 2 layers of 32, 4 heads.
TINY_ENCODER = ["model.encoder_layers=2", "model.encoder_embed_dim=32", "model.encoder_ffn_embed_dim=64",
                "model.encoder_attention_heads=4", "model.conv_pos=16", "model.conv_pos_groups=4"]
#: Two trained updates on the CPU, whatever the recipe says about GPUs, fp16 and long warm-ups.
TWO_UPDATES = ["common.cpu=true", "common.fp16=false", "distributed_training.distributed_world_size=1",
               "optimization.max_update=2", "+optimization.update_freq=[1]", "dataset.num_workers=0",
               "dataset.max_tokens=40000", "dataset.disable_validation=true", "common.log_interval=1",
               "checkpoint.no_epoch_checkpoints=true", "checkpoint.save_interval_updates=0"]
PRETRAIN_TINY = TINY_ENCODER + [
    "model.conv_feature_layers='[(32, 10, 5)] + [(32, 3, 2)] * 2'", "model.final_dim=16", "model.latent_vars=8",
    "model.num_negatives=5", "task.max_sample_size=12000", "task.min_sample_size=4000",
    "lr_scheduler.warmup_updates=1", "model.encoder_layerdrop=0.0"]
PRETRAINING = {
    # fairseq's base recipe, with a projection from the CNN's 24 channels to the encoder's 32
    "w2v2_base_pretrain": ("wav2vec2_base_librispeech", ["model.conv_feature_layers='[(24, 10, 5)] + [(24, 3, 2)] * 2'"]),
    # the large recipe's switches (layer_norm_first, extractor_mode layer_norm); CNN width == encoder width, so
    # the model has no post_extract_proj
    "w2v2_large_pretrain": ("wav2vec2_large_librivox", []),
    **{f"w2v2_conformer_{pos}_pretrain": ("wav2vec2_conformer_base_librispeech",
                                          [f"model.pos_enc_type={pos}", "model.depthwise_conv_kernel_size=3"])
       for pos in ("abs", "rope", "rel_pos")},
}
V1_FLAGS = ["--num-workers", "0", "--cpu", "--max-update", "2", "--no-epoch-checkpoints", "--arch", "wav2vec",
            "--task", "audio_pretraining", "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "cosine",
            "--warmup-updates", "1", "--warmup-init-lr", "1e-07", "--criterion", "wav2vec",
            "--conv-feature-layers", "[(32, 10, 5), (32, 8, 4), (32, 4, 2)]",
            "--conv-aggregator-layers", "[(32, 2, 1), (32, 3, 1)]", "--skip-connections-agg",
            "--residual-scale", "0.5", "--log-compression", "--num-negatives", "4", "--prediction-steps", "3",
            "--max-sample-size", "12000", "--max-tokens", "40000", "--seed", "3", "--disable-validation"]
LEGACY = {
    "wav2vec1_cnn": [],
    "vq_wav2vec_gumbel": ["--activation", "gelu", "--offset", "auto", "--vq-type", "gumbel", "--vq-groups", "2",
                          "--vq-depth", "2", "--combine-groups", "--vq-vars", "8", "--vq-temp", "(2,0.5,0.999995)",
                          "--cross-sample-negatives", "0"],
    "vq_wav2vec_kmeans": ["--activation", "gelu", "--offset", "auto", "--vq-type", "kmeans", "--vq-groups", "2",
                          "--vq-vars", "8", "--vq-gamma", "0.25", "--loss-weights", "[1]",
                          "--cross-sample-negatives", "0"],
}
LM_TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat and the log"]
LM_FLAGS = ["--task", "language_modeling", "--arch", "transformer_lm", "--criterion", "cross_entropy",
            "--decoder-layers", "2",
            "--decoder-embed-dim", "32", "--decoder-input-dim", "32", "--decoder-output-dim", "32",
            "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "4",
            "--tokens-per-sample", "16", "--optimizer", "adam", "--lr", "0.001", "--max-update", "2",
            "--batch-size", "2", "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--disable-validation",
            "--seed", "2"]


def _command(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _run(argv: list, cwd: str) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def write_corpus(folder: str) -> np.ndarray:
    """Six utterances of tones and noise with a manifest and letter labels; returns the fixed test inputs."""
    rng = np.random.RandomState(0)
    os.makedirs(folder, exist_ok=True)
    lines, words = [folder], []
    for i in range(6):
        n = 8000 + 800 * i
        t = np.arange(n) / RATE
        wav = 0.3 * np.sin(2 * np.pi * (180 + 50 * i) * t) + 0.05 * rng.randn(n)
        sf.write(os.path.join(folder, f"u{i}.wav"), wav.astype(np.float32), RATE)
        lines.append(f"u{i}.wav\t{n}")
        words.append(" ".join(rng.choice(["EAT", "TEN", "NOSE", "SEA", "TOE"], size=2)))
    for split in ("train", "valid"):
        with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(folder, f"{split}.ltr"), "w") as f:
            f.write("".join(" ".join(w.replace(" ", "|")) + " |\n" for w in words))
        with open(os.path.join(folder, f"{split}.wrd"), "w") as f:
            f.write("\n".join(words) + "\n")
    with open(os.path.join(folder, "dict.ltr.txt"), "w") as f:
        f.write("".join(f"{c} {100 - i}\n" for i, c in enumerate(LETTERS)))
    return (0.2 * rng.randn(2, 9600)).astype(np.float32)


def _keep(save_dir: str, out_dir: str, name: str, inputs: dict) -> None:
    target = os.path.join(out_dir, name)
    os.makedirs(target, exist_ok=True)
    shutil.copyfile(os.path.join(save_dir, "checkpoint_last.pt"), os.path.join(target, "checkpoint.pt"))
    np.savez(os.path.join(target, "inputs.npz"), **inputs)
    print(f"wrote {target}")


def write_all(out_dir: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data")
        source = write_corpus(data)
        hydra = [_command("fairseq-hydra-train"), f"task.data={data}"]
        for name, (recipe, extra) in PRETRAINING.items():
            save_dir = os.path.join(work, name)
            _run(hydra + PRETRAIN_TINY + TWO_UPDATES + extra + [f"checkpoint.save_dir={save_dir}",
                 "--config-dir", os.path.join(REPO, "config", "pretraining"), "--config-name", recipe], REPO)
            _keep(save_dir, out_dir, name, {"source": source})
        save_dir = os.path.join(work, "w2v2_ctc_base_10m")
        pretrained = os.path.join(work, "w2v2_base_pretrain", "checkpoint_last.pt")
        _run(hydra + TWO_UPDATES + [f"model.w2v_path={pretrained}", f"checkpoint.save_dir={save_dir}",
             "model.freeze_finetune_updates=0", "model.mask_channel_length=8", "lr_scheduler.phase_ratio=[0.1,0.4,0.5]",
             "--config-dir", os.path.join(REPO, "config", "finetuning"), "--config-name", "base_10m"], REPO)
        _keep(save_dir, out_dir, "w2v2_ctc_base_10m", {"source": source})
        shutil.copyfile(os.path.join(data, "dict.ltr.txt"), os.path.join(out_dir, "w2v2_ctc_base_10m", "dict.ltr.txt"))
        for name, flags in LEGACY.items():
            save_dir = os.path.join(work, name)
            _run([_command("fairseq-train"), data, "--save-dir", save_dir] + V1_FLAGS + flags, REPO)
            _keep(save_dir, out_dir, name, {"source": source})
        write_language_model(work, out_dir)


def write_language_model(work: str, out_dir: str) -> None:
    """A transformer_lm for fairseqlm decoding: dict.txt (fairseq's format) and raw-text splits."""
    lm_data = os.path.join(work, "lm")
    os.makedirs(lm_data)
    words = sorted({w for line in LM_TEXT for w in line.split()})
    with open(os.path.join(lm_data, "dict.txt"), "w") as f:
        f.write("".join(f"{w} {10 + i}\n" for i, w in enumerate(words)))
    for split in ("train", "valid"):
        with open(os.path.join(lm_data, f"{split}.txt"), "w") as f:
            f.write("\n".join(LM_TEXT) + "\n")
    save_dir = os.path.join(work, "transformer_lm")
    _run([_command("fairseq-train"), lm_data, "--save-dir", save_dir] + LM_FLAGS, REPO)
    eos, first_symbol = 2, 4  # fairseq's Dictionary: <s> <pad> </s> <unk>, then the file's symbols
    tokens = np.array([[eos] + [first_symbol + words.index(w) for w in line.split()][:5] for line in LM_TEXT[:2]])
    _keep(save_dir, out_dir, "transformer_lm", {"tokens": tokens})
    shutil.copyfile(os.path.join(lm_data, "dict.txt"), os.path.join(out_dir, "transformer_lm", "dict.txt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=DEFAULT_OUT)
    args = parser.parse_args()
    write_all(args.output_dir)


if __name__ == "__main__":
    main()
