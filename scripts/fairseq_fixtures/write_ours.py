"""Step 1 of the other direction: fairseq_lite writes small checkpoints for genuine fairseq to read.

Run with the project's venv (``.venv/bin/python scripts/fairseq_fixtures/write_ours.py [--only NAME...]``). Each
fixture is trained for two updates by fairseq_lite's own commands, as a user runs them (``fairseq-hydra-train``
on fairseq's yaml recipes with tiny-size overrides: config/pretraining, config/finetuning and
examples/hubert/config; ``fairseq-train`` flags for wav2vec 1.0, vq-wav2vec and the transformer LM), and lands
in ``tests/fixtures/fairseq_lite_written/<name>/`` as ``checkpoint.pt`` plus ``inputs.npz`` (the fixed inputs
the reader runs the model on). Everything is trained in a temporary folder deleted before fairseq reads the
files, so they must load without their data, label folders or pretrained files. Step 2 is ``read_ours.py`` in
the genuine-fairseq venv; ``make.py`` runs both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "fairseq_lite_written")
RATE = 16_000
LETTERS = "|EATONS"
CORPUS_LENGTHS = [8000 + 800 * i for i in range(6)]
HUBERT_LABEL_RATE = 50

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
#: fairseq's HuBERT recipe shrunk: km labels at 50 Hz from a CNN of BASE's strides (320 samples a frame), 24
#: channels projected to the encoder's 32.
HUBERT_TINY = TINY_ENCODER + [
    "task.labels=[km]", f"model.label_rate={HUBERT_LABEL_RATE}", "model.final_dim=16",
    "model.conv_feature_layers='[(24, 10, 5)] + [(24, 3, 2)] * 4 + [(24, 2, 2)] * 2'", "task.min_sample_size=4000",
    "task.max_sample_size=12000", "lr_scheduler.warmup_updates=1", "model.encoder_layerdrop=0.0",
    "common.tensorboard_logdir=null"]
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
    for i, n in enumerate(CORPUS_LENGTHS):
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


def write_km_labels(folder: str, num_units: int = 8) -> None:
    """HuBERT's first-iteration labels for the corpus: ``{train,valid}.km`` (seeded unit ids at 50 Hz, as many as
    fairseq's length check expects) and ``dict.km.txt`` (``i 1`` lines, what write_km_dict.py writes)."""
    rng = np.random.RandomState(11)
    os.makedirs(folder, exist_ok=True)
    lines = [" ".join(map(str, rng.randint(0, num_units, int(np.ceil(n / RATE * HUBERT_LABEL_RATE)))))
             for n in CORPUS_LENGTHS]
    for split in ("train", "valid"):
        with open(os.path.join(folder, f"{split}.km"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    with open(os.path.join(folder, "dict.km.txt"), "w") as f:
        f.write("".join(f"{i} 1\n" for i in range(num_units)))


def _keep(save_dir: str, out_dir: str, name: str, inputs: dict, files: Sequence[str] = ()) -> None:
    """``out_dir/name``: the checkpoint ``save_dir`` ends with, ``inputs.npz`` and copies of ``files``."""
    target = os.path.join(out_dir, name)
    os.makedirs(target, exist_ok=True)
    shutil.copyfile(os.path.join(save_dir, "checkpoint_last.pt"), os.path.join(target, "checkpoint.pt"))
    np.savez(os.path.join(target, "inputs.npz"), **inputs)
    for path in files:
        shutil.copyfile(path, os.path.join(target, os.path.basename(path)))
    print(f"wrote {target}")


class Corpus:
    """The temporary folder the fixtures train in: the audio corpus ``data``, the fixed test ``source`` and the
    ``hydra`` command line (``fairseq-hydra-train task.data=...``)."""

    def __init__(self, work: str):
        self.work = work
        self.data = os.path.join(work, "data")
        self.source = write_corpus(self.data)
        self.hydra = [_command("fairseq-hydra-train"), f"task.data={self.data}"]

    def save_dir(self, name: str) -> str:
        return os.path.join(self.work, name)

    def hydra_train(self, name: str, config_dir: str, recipe: str, overrides: Sequence[str]) -> str:
        """``fairseq-hydra-train`` of ``recipe`` (in ``config_dir`` under the repo) into ``save_dir(name)``."""
        save_dir = self.save_dir(name)
        _run(self.hydra + list(overrides) + [f"checkpoint.save_dir={save_dir}", "--config-dir",
                                             os.path.join(REPO, config_dir), "--config-name", recipe], REPO)
        return save_dir


def _pretraining(recipe: str, extra: Sequence[str]) -> Callable:
    def write(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
        overrides = PRETRAIN_TINY + TWO_UPDATES + list(extra)
        return corpus.hydra_train(name, "config/pretraining", recipe, overrides), {"source": corpus.source}, []
    return write


def _w2v2_ctc(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
    pretrained = os.path.join(corpus.save_dir("w2v2_base_pretrain"), "checkpoint_last.pt")
    overrides = TWO_UPDATES + [f"model.w2v_path={pretrained}", "model.freeze_finetune_updates=0",
                               "model.mask_channel_length=8", "lr_scheduler.phase_ratio=[0.1,0.4,0.5]"]
    save_dir = corpus.hydra_train(name, "config/finetuning", "base_10m", overrides)
    return save_dir, {"source": corpus.source}, [os.path.join(corpus.data, "dict.ltr.txt")]


def _hubert(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
    """fairseq's hubert_base_librispeech recipe on km labels kept out of ``data`` (in a folder deleted before
    fairseq reads the file: the dictionaries travel in task_state)."""
    label_dir = os.path.join(corpus.work, "km")
    write_km_labels(label_dir)
    overrides = HUBERT_TINY + TWO_UPDATES + [f"task.label_dir={label_dir}"]
    return corpus.hydra_train(name, "examples/hubert/config/pretrain", "hubert_base_librispeech", overrides), \
        {"source": corpus.source}, []


def _hubert_ctc(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
    """fairseq's base_10h recipe from ``hubert_base_pretrain`` on the ltr labels (the pretrained file is deleted
    before fairseq reads this one: w2v_args and the pretraining dictionaries are stored)."""
    pretrained = os.path.join(corpus.save_dir("hubert_base_pretrain"), "checkpoint_last.pt")
    overrides = TWO_UPDATES + [f"task.label_dir={corpus.data}", f"model.w2v_path={pretrained}",
                               "model.freeze_finetune_updates=0", "model.mask_channel_length=8",
                               "common.tensorboard_logdir=null"]
    save_dir = corpus.hydra_train(name, "examples/hubert/config/finetune", "base_10h", overrides)
    return save_dir, {"source": corpus.source}, [os.path.join(corpus.data, "dict.ltr.txt")]


def _hubert_ctc_from_hf(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
    """A random tiny HF ``HubertForCTC`` (BASE's layout: group-norm CNN, post-LN) converted by
    ``scripts/convert_from_hf.py``: HF keeps no label embeddings, so the file must load with no dict.km.txt."""
    import json

    import torch
    import transformers

    hf_dir, save_dir = os.path.join(corpus.work, "hf_hubert_ctc"), corpus.save_dir(name)
    vocab = {s: i for i, s in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + list(LETTERS))}
    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(24, 24, 24),
        conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, vocab_size=len(vocab),
        pad_token_id=0, final_dropout=0.0)
    transformers.HubertForCTC(config).save_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(hf_dir)
    os.makedirs(save_dir)
    _run([sys.executable, os.path.join(REPO, "scripts", "convert_from_hf.py"), hf_dir,
          os.path.join(save_dir, "checkpoint_last.pt")], REPO)
    return save_dir, {"source": corpus.source}, []


def _legacy(flags: Sequence[str]) -> Callable:
    def write(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
        save_dir = corpus.save_dir(name)
        _run([_command("fairseq-train"), corpus.data, "--save-dir", save_dir] + V1_FLAGS + list(flags), REPO)
        return save_dir, {"source": corpus.source}, []
    return write


def _language_model(corpus: Corpus, name: str) -> Tuple[str, dict, list]:
    """A transformer_lm for fairseqlm decoding, trained on raw-text splits; its dict.txt (fairseq's format) is kept."""
    lm_data = os.path.join(corpus.work, "lm")
    os.makedirs(lm_data)
    words = sorted({w for line in LM_TEXT for w in line.split()})
    with open(os.path.join(lm_data, "dict.txt"), "w") as f:
        f.write("".join(f"{w} {10 + i}\n" for i, w in enumerate(words)))
    for split in ("train", "valid"):
        with open(os.path.join(lm_data, f"{split}.txt"), "w") as f:
            f.write("\n".join(LM_TEXT) + "\n")
    save_dir = corpus.save_dir(name)
    _run([_command("fairseq-train"), lm_data, "--save-dir", save_dir] + LM_FLAGS, REPO)
    eos, first_symbol = 2, 4  # fairseq's Dictionary: <s> <pad> </s> <unk>, then the file's symbols
    tokens = np.array([[eos] + [first_symbol + words.index(w) for w in line.split()][:5] for line in LM_TEXT[:2]])
    return save_dir, {"tokens": tokens}, [os.path.join(lm_data, "dict.txt")]


#: Each fixture's writer (corpus, name) -> (save dir, inputs, files to keep beside the checkpoint), in the order
#: they run; a fine-tuning fixture trains after the pretraining fixture it starts from (REQUIRES).
WRITERS: Dict[str, Callable] = {
    **{name: _pretraining(recipe, extra) for name, (recipe, extra) in PRETRAINING.items()},
    "w2v2_ctc_base_10m": _w2v2_ctc,
    **{name: _legacy(flags) for name, flags in LEGACY.items()},
    "transformer_lm": _language_model,
    "hubert_base_pretrain": _hubert,
    "hubert_ctc_base_10h": _hubert_ctc,
    "hubert_ctc_from_hf": _hubert_ctc_from_hf,
}
REQUIRES = {"w2v2_ctc_base_10m": "w2v2_base_pretrain", "hubert_ctc_base_10h": "hubert_base_pretrain"}


def write_all(out_dir: str, only: Sequence[str] = ()) -> None:
    """Write the fixtures named in ``only`` (all when empty) into ``out_dir``; those they start from are trained
    but not kept."""
    unknown = sorted(set(only) - set(WRITERS))
    if unknown:
        raise SystemExit(f"error: unknown fixture(s) {', '.join(unknown)}; choose from {', '.join(WRITERS)}")
    kept = set(only or WRITERS)
    trained = kept | {REQUIRES[name] for name in kept if name in REQUIRES}
    with tempfile.TemporaryDirectory() as work:
        corpus = Corpus(work)
        for name in (n for n in WRITERS if n in trained):
            save_dir, inputs, files = WRITERS[name](corpus, name)
            if name in kept:
                _keep(save_dir, out_dir, name, inputs, files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", default=[], metavar="NAME",
                        help=f"write only these fixtures: {', '.join(WRITERS)}")
    args = parser.parse_args()
    write_all(args.output_dir, args.only)


if __name__ == "__main__":
    main()
