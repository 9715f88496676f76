"""Genuine fairseq 0.12.2 fixtures: conformer pretraining (abs, rope, rel_pos), wav2vec 1.0, vq-wav2vec
(gumbel, k-means) and a transformer_lm, each trained for two updates by fairseq's own commands.

Run with the genuine-fairseq venv only (never imported by fairseq_lite)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/legacy_fixtures.py

Every fixture lands in ``tests/fixtures/fairseq/<name>/``: ``checkpoint.pt`` (fairseq's ``checkpoint_last.pt``,
copied byte for byte), ``inputs.npz``, ``outputs.npz`` (what fairseq computed on the inputs in eval mode) and
``meta.json`` (versions, the command, what was recorded and why). ``tests/test_fairseq_genuine_legacy.py``
loads them with fairseq_lite and compares.

- Conformer: ``fairseq-hydra-train`` on fairseq's ``wav2vec2_conformer_base_librispeech.yaml`` (it sets
  ``attn_type: espnet``, which rope and rel_pos need) with ``model.pos_enc_type=<abs|rope|rel_pos>`` and tiny
  sizes. fairseq 0.12.2 builds and trains all three unpatched (the README's ``--attn-type espnet
  --pos-enc-type X`` flags are not Hydra syntax: they are written as the overrides ``model.attn_type=espnet
  model.pos_enc_type=X``). Recorded: CNN features, each layer's output, the final ``x``, a padded batch, and
  the contrastive loss of fairseq's criterion with the mask and negatives fairseq drew (recorded too).
- wav2vec 1.0 / vq-wav2vec: ``fairseq-train`` with the flags of fairseq's examples/wav2vec/README.md (tiny
  sizes). fairseq 0.12.2 turns these flags into a dataclass ``cfg``; its checkpoints store ``cfg`` and
  ``args: None`` (only fairseq < 0.10 wrote ``args``). 0.12.2 makes True-default booleans ``store_false``, so
  the README's ``--skip-connections-agg`` and ``--log-compression`` store False. Recorded: ``z``, the
  quantizer's output and codes, ``c``, the criterion loss with fairseq's negatives, and the codes that
  fairseq's own ``examples/wav2vec/vq-wav2vec_featurize.py`` writes.
- transformer_lm: ``fairseq-preprocess --only-source`` then ``fairseq-train --task language_modeling --arch
  transformer_lm`` (the flags of fairseq's examples/language_model/README.md, tiny sizes); ``dict.txt`` beside
  the checkpoint as fairseqlm decoding expects. Recorded: log-probabilities of fixed token sequences.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RATE, fairseq_dir, generator_main, hydra_train, legacy_train, module_outputs,  # noqa: E402
                    recording_all, run_fairseq, tone, write_audio_corpus, write_fixture, write_manifest)

TRAIN_LENGTHS = [8000, 9600, 7200, 8800, 8400, 9200]

#: Tiny conformer: CNN 32 wide (stride 20), 2 layers of 32, 4 heads, depthwise kernel 3; 2 updates on the CPU.
CONFORMER_OVERRIDES = [
    "common.cpu=true", "common.fp16=false", "common.log_interval=1", "common.seed=1",
    "distributed_training.distributed_world_size=1", "optimization.max_update=2", "dataset.num_workers=0",
    "dataset.max_tokens=40000", "dataset.disable_validation=true", "task.max_sample_size=12000",
    "task.min_sample_size=4000", "lr_scheduler.warmup_updates=1", "model.encoder_layerdrop=0.0",
    "model.encoder_embed_dim=32", "model.final_dim=16", "+model.encoder_layers=2", "+model.encoder_ffn_embed_dim=64",
    "+model.encoder_attention_heads=4", "+model.conv_feature_layers='[(32, 10, 5)] + [(32, 3, 2)] * 2'",
    "+model.latent_vars=8", "+model.num_negatives=10", "+model.conv_pos=16", "+model.conv_pos_groups=4",
    "+model.depthwise_conv_kernel_size=3",
]
CONFORMER_RECIPE = "wav2vec2_conformer_base_librispeech"

#: The flags of fairseq's README "Train a wav2vec model", tiny sizes, two updates on the CPU.
WAV2VEC_FLAGS = [
    "--num-workers", "0", "--cpu", "--max-update", "2", "--save-interval", "1", "--no-epoch-checkpoints",
    "--arch", "wav2vec", "--task", "audio_pretraining", "--min-lr", "1e-06", "--stop-min-lr", "1e-09",
    "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "cosine",
    "--conv-feature-layers", "[(16, 10, 5), (16, 8, 4), (16, 4, 2)]",
    "--conv-aggregator-layers", "[(16, 2, 1), (16, 3, 1), (16, 4, 1)]",
    "--skip-connections-agg", "--residual-scale", "0.5", "--log-compression", "--warmup-updates", "1",
    "--warmup-init-lr", "1e-07", "--criterion", "wav2vec", "--num-negatives", "4", "--prediction-steps", "3",
    "--max-sample-size", "12000", "--max-tokens", "40000", "--skip-invalid-size-inputs-valid-test",
    "--disable-validation", "--log-interval", "1",
]
#: The README's "Train a gumbel vq-wav2vec model" flags, tiny sizes (its --vq-vars 320 → 16).
VQ_GUMBEL_FLAGS = [
    "--num-workers", "0", "--cpu", "--max-update", "2", "--save-interval", "1", "--no-epoch-checkpoints",
    "--arch", "wav2vec", "--task", "audio_pretraining", "--min-lr", "1e-06", "--stop-min-lr", "1e-09",
    "--optimizer", "adam", "--lr", "1e-05", "--lr-scheduler", "cosine",
    "--conv-feature-layers", "[(16, 10, 5), (16, 8, 4), (16, 4, 2), (16, 1, 1)]",
    "--conv-aggregator-layers", "[(16, 2, 1), (16, 3, 1), (16, 4, 1)]",
    "--activation", "gelu", "--offset", "auto", "--skip-connections-agg", "--residual-scale", "0.5",
    "--log-keys", '["prob_perplexity","code_perplexity","temp"]', "--vq-type", "gumbel", "--vq-groups", "2",
    "--vq-depth", "2", "--combine-groups", "--vq-vars", "16", "--vq-temp", "(2,0.5,0.999995)",
    "--prediction-steps", "3", "--warmup-updates", "1", "--warmup-init-lr", "1e-07", "--criterion", "wav2vec",
    "--num-negatives", "4", "--max-sample-size", "12000", "--max-tokens", "40000",
    "--cross-sample-negatives", "0", "--update-freq", "1", "--seed", "2", "--skip-invalid-size-inputs-valid-test",
    "--disable-validation", "--log-interval", "1",
]


def kmeans_flags() -> List[str]:
    """The README's k-means recipe: the gumbel command with ``--vq-type kmeans`` and ``--loss-weights [1]``.
    ``--skip-connections-agg`` is left out so that one fixture keeps the aggregator's skip connections on
    (0.12.2's flag switches them off)."""
    flags = [f for f in VQ_GUMBEL_FLAGS if f != "--skip-connections-agg"]
    flags[flags.index("--vq-type") + 1] = "kmeans"
    return flags + ["--loss-weights", "[1]", "--vq-gamma", "0.25"]


LM_TEXT = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog ran", "the mat and the log",
           "a dog sat on a cat", "the cat ran on the log"]
#: fairseq's examples/language_model/README.md training flags, tiny sizes, two updates on the CPU.
LM_FLAGS = [
    "--task", "language_modeling", "--arch", "transformer_lm", "--share-decoder-input-output-embed",
    "--dropout", "0.1", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.01",
    "--clip-norm", "0.0", "--lr", "0.0005", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "1",
    "--warmup-init-lr", "1e-07", "--tokens-per-sample", "16", "--sample-break-mode", "none", "--max-tokens", "64",
    "--max-update", "2", "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--disable-validation",
    "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
    "--decoder-attention-heads", "4", "--seed", "1", "--log-interval", "1",
]


def load(checkpoint: str) -> Tuple[Any, Any, Any]:
    """fairseq's own ``load_model_ensemble_and_task``: (model in eval mode, cfg, task)."""
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
    return models[0].eval(), cfg, task


def criterion_loss(model: Any, task: Any, cfg: Any, source: torch.Tensor, draws: Sequence[Tuple[Any, str]]
                   ) -> Dict[str, Any]:
    """fairseq's criterion on ``source`` in eval mode: loss, sample size, every numeric logging value, the
    logits, and what ``draws`` ((object, method) pairs) returned while it ran (fairseq's mask, negatives)."""
    criterion = task.build_criterion(cfg.criterion).eval()
    sample = {"id": torch.arange(source.size(0)), "net_input": {"source": source}}
    with recording_all([(model, "get_logits")] + list(draws)) as calls, torch.no_grad():
        loss, sample_size, logging_output = criterion(model, sample)
    out = {"loss": loss, "sample_size": np.float32(sample_size), "logits": calls[0][0]}
    for key, value in logging_output.items():
        if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1):
            out[f"log_{key}"] = np.float32(float(value))
    for (obj, method), returned in zip(draws, calls[1:]):
        if len(returned) != 1:
            raise SystemExit(f"expected one call of {method}, got {len(returned)}")
        out[f"drawn_{method}"] = returned[0]
    return out


# -- wav2vec 2.0 conformer --------------------------------------------------------------------------------


def conformer_outputs(model: Any, source: torch.Tensor, padded_source: torch.Tensor, padding_mask: torch.Tensor
                      ) -> Dict[str, Any]:
    """Eval-mode features (B×C×T CNN output), each layer's output (B×T×C, time padding removed), the final
    ``x`` and ``unmasked_features``; ``x`` of the zero-padded batch ``padded_source`` with its ``padding_mask``."""
    with torch.no_grad():
        out = {"features": model.feature_extractor(source)}
        with module_outputs(model.encoder.layers) as layers:
            result = model.extract_features(source, None, mask=False)
        frames = result["x"].size(1)
        out.update(x=result["x"], unmasked_features=result["features"])
        for i, layer_x in enumerate(layers):
            out[f"layer_{i}"] = layer_x.transpose(0, 1)[:, :frames]  # fairseq pads time to an even length (abs)
        padded = model.extract_features(padded_source, padding_mask, mask=False)
        out.update(x_padded=padded["x"], frame_padding_mask=padded["padding_mask"])
    return out


def conformer_fixture(pos_enc_type: str, data: str, work: str, out_dir: str, source: torch.Tensor) -> None:
    overrides = [f"task.data={data}", f"model.pos_enc_type={pos_enc_type}", *CONFORMER_OVERRIDES]
    checkpoint = hydra_train(os.path.join(fairseq_dir(), "examples", "wav2vec", "config", "pretraining"),
                             CONFORMER_RECIPE, overrides, work)
    model, cfg, task = load(checkpoint)
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    padding_mask[1, -1200:] = True
    padded_source = source.masked_fill(padding_mask, 0.0)
    outputs = conformer_outputs(model, source, padded_source, padding_mask)
    torch.manual_seed(7)
    np.random.seed(7)
    loss = criterion_loss(model, task, cfg, source, [(model, "apply_mask"), (model, "sample_negatives")])
    outputs.update({k: v for k, v in loss.items() if not k.startswith("drawn_")})
    outputs["mask_indices"] = loss["drawn_apply_mask"][1]
    outputs["negative_indices"] = loss["drawn_sample_negatives"][1]
    write_fixture(os.path.join(out_dir, f"conformer_{pos_enc_type}_pretrain"), checkpoint,
                  {"source": source, "padded_source": padded_source, "padding_mask": padding_mask}, outputs, {
                      "command": shlex.join(["fairseq-hydra-train", "--config-dir",
                                             "fairseq/examples/wav2vec/config/pretraining", "--config-name",
                                             CONFORMER_RECIPE, "task.data=<manifest dir>", *overrides[1:]]),
                      "recorded": "eval mode: features = feature_extractor(source) (B x C x T); layer_i = output of "
                                  "encoder.layers[i] (B x T x C); x, unmasked_features = extract_features(source, "
                                  "mask=False); x_padded, frame_padding_mask = extract_features(padded_source, "
                                  "padding_mask); loss, sample_size, log_* = the wav2vec criterion on source in "
                                  "eval mode, logits = model.get_logits, with the mask (mask_indices, B x T) and "
                                  "the negatives (negative_indices: fairseq's sample_negatives indices, B x M*N "
                                  "into the masked targets) that fairseq drew",
                      "patches": "none: fairseq 0.12.2 builds and trains abs, rope and rel_pos with attn_type=espnet",
                      "notes": "with attn_type left at its default '', fairseq 0.12.2 builds rope with plain "
                               "MultiheadAttention and no positions at all (pos_conv is built but not applied), "
                               "and rel_pos fails in the first forward with \"TypeError: "
                               "MultiheadAttention.forward() got an unexpected keyword argument 'pos_emb'\"; the "
                               "recipe's attn_type: espnet is what makes both work",
                  })


# -- wav2vec 1.0 and vq-wav2vec -----------------------------------------------------------------------------


def wav2vec_outputs(model: Any, source: torch.Tensor) -> Dict[str, Any]:
    """Eval-mode ``z`` (feature_extractor), the quantizer's output and codes (``forward_idx``) and ``c``
    (feature_aggregator) as fairseq's featurize scripts compute them."""
    with torch.no_grad():
        z = model.feature_extractor(source)
        out = {"z": z}
        if model.vector_quantizer is not None:
            out["q"], out["codes"] = model.vector_quantizer.forward_idx(z)
            z = model.vector_quantizer(z)["x"]
        out["c"] = model.feature_aggregator(z)
    return out


def vq_featurize(checkpoint: str, work: str, folder: str) -> None:
    """fairseq's examples/wav2vec/vq-wav2vec_featurize.py (``--extension tsv --splits train``) on two fixed
    files; the files go to ``folder/audio/`` and the ``train.src`` it wrote to ``folder``. The script calls
    ``.cuda()``, so a wrapper makes that a no-op in this CPU-only venv."""
    audio = os.path.join(work, "featurize_audio")
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    names, _ = write_featurize_audio(audio)
    for name in names:
        shutil.copyfile(os.path.join(audio, name), os.path.join(folder, "audio", name))
    script = os.path.join(fairseq_dir(), "examples", "wav2vec", "vq-wav2vec_featurize.py")
    wrapper = os.path.join(work, "featurize_on_cpu.py")
    with open(wrapper, "w") as f:
        f.write("import runpy, sys, torch\n"
                "torch.Tensor.cuda = lambda self, *a, **k: self\n"
                "torch.nn.Module.cuda = lambda self, *a, **k: self\n"
                "torch.cuda.empty_cache = lambda: None\n"
                f"sys.argv = [{script!r}] + sys.argv[1:]\n"
                f"runpy.run_path({script!r}, run_name='__main__')\n")
    output = os.path.join(work, "codes")
    run_fairseq([wrapper, "--data-dir", audio, "--output-dir", output, "--checkpoint", checkpoint,
                 "--splits", "train", "--extension", "tsv"], os.path.join(work, "featurize.log"))
    shutil.copyfile(os.path.join(output, "train.src"), os.path.join(folder, "train.src"))


def write_featurize_audio(folder: str) -> Tuple[List[str], List[int]]:
    """The two fixed files (4000 and 5600 samples) and their manifest ``train.tsv``; returns names, lengths."""
    rng = np.random.RandomState(5)
    os.makedirs(folder)
    names, lengths = ["a0.wav", "a1.wav"], [4000, 5600]
    for name, n, freq in zip(names, lengths, (220.0, 330.0)):
        sf.write(os.path.join(folder, name), tone(n, freq, rng), RATE, subtype="PCM_16")
    write_manifest(folder, names, lengths, ["train"])
    return names, lengths


def wav2vec_fixture(name: str, flags: List[str], data: str, work: str, out_dir: str, source: torch.Tensor,
                    loss_source: torch.Tensor) -> None:
    checkpoint = legacy_train(data, flags, work)
    model, cfg, task = load(checkpoint)
    outputs = wav2vec_outputs(model, source)
    torch.manual_seed(7)
    loss = criterion_loss(model, task, cfg, loss_source, [(model.wav2vec_predictions, "sample_negatives")])
    outputs.update({k: v for k, v in loss.items() if not k.startswith("drawn_")})
    outputs["negatives"] = loss["drawn_sample_negatives"]
    folder = os.path.join(out_dir, name)
    recorded = ("eval mode: z = feature_extractor(source) (B x C x T); c = feature_aggregator(z, or the "
                "quantizer's x); loss, sample_size, log_* = the wav2vec criterion on loss_source, logits = "
                "model.get_logits, with the negatives fairseq drew (negatives: K x B x C x T, the tensor "
                "wav2vec_predictions.sample_negatives returned)")
    patches = "none"
    if model.vector_quantizer is not None:
        vq_featurize(checkpoint, work, folder)
        patches = "none to fairseq; its vq-wav2vec_featurize.py ran with .cuda() made a no-op (CPU-only venv)"
        recorded += ("; q, codes = vector_quantizer.forward_idx(z); train.src = what fairseq's "
                     "vq-wav2vec_featurize.py --extension tsv --splits train wrote for audio/a0.wav, a1.wav")
    write_fixture(folder, checkpoint, {"source": source, "loss_source": loss_source}, outputs, {
        "command": shlex.join(["fairseq-train", "<manifest dir>", "--save-dir", "<dir>", *flags]),
        "stored_args": checkpoint_kind(checkpoint), "recorded": recorded,
        "patches": patches,
    })


def checkpoint_kind(checkpoint: str) -> str:
    """Whether fairseq stored the legacy ``args`` Namespace or a ``cfg`` (and which model settings)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = state["cfg"]["model"]
    return (f"args={state['args']!r}; cfg.model: skip_connections_agg={model['skip_connections_agg']}, "
            f"log_compression={model['log_compression']}, vq_type={model['vq_type']}, "
            f"aggregator={model['aggregator']}, infonce={model['infonce']}")


# -- transformer_lm ------------------------------------------------------------------------------------------


def lm_fixture(work: str, out_dir: str) -> None:
    text = os.path.join(work, "text")
    os.makedirs(text)
    for split, lines in (("train", LM_TEXT), ("valid", LM_TEXT[:2])):
        with open(os.path.join(text, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    data_bin = os.path.join(work, "data-bin")
    run_fairseq(["-m", "fairseq_cli.preprocess", "--only-source", "--trainpref", os.path.join(text, "train.txt"),
                 "--validpref", os.path.join(text, "valid.txt"), "--destdir", data_bin, "--workers", "1"],
                os.path.join(work, "preprocess.log"))
    checkpoint = legacy_train(data_bin, LM_FLAGS, work)
    model, _, task = load(checkpoint)
    d = task.target_dictionary
    sentences = ["the cat sat on the mat", "a dog ran on the log", "the log and a cat sat"]
    tokens = torch.stack([torch.cat([torch.tensor([d.eos()]), d.encode_line(s, append_eos=False).long()])
                          for s in sentences])
    padded = tokens.clone()
    padded[1, -2:] = d.pad()
    with torch.no_grad():
        log_probs = model.get_normalized_probs(model(tokens), log_probs=True)
        log_probs_padded = model.get_normalized_probs(model(padded), log_probs=True)
    folder = os.path.join(out_dir, "transformer_lm")
    write_fixture(folder, checkpoint, {"tokens": tokens, "padded_tokens": padded},
                  {"log_probs": log_probs, "log_probs_padded": log_probs_padded}, {
                      "command": ["fairseq-preprocess --only-source --trainpref train.txt --validpref valid.txt "
                                  "--destdir data-bin --workers 1",
                                  shlex.join(["fairseq-train", "data-bin", "--save-dir", "<dir>", *LM_FLAGS])],
                      "sentences": sentences,
                      "recorded": "eval mode: log_probs = get_normalized_probs(model(tokens), log_probs=True) "
                                  "(B x T x V; tokens = eos + the sentence's ids); log_probs_padded the same for "
                                  "padded_tokens (row 1 ends in 2 pads, compare its first T-2 positions)",
                      "patches": "none",
                  })
    shutil.copyfile(os.path.join(data_bin, "dict.txt"), os.path.join(folder, "dict.txt"))


# -- driver -------------------------------------------------------------------------------------------------


def generate(out_dir: str) -> None:
    """Write every fixture of this module into ``out_dir``."""
    warnings.filterwarnings("ignore")
    rng = np.random.RandomState(1)
    source = torch.from_numpy(np.stack([tone(4800, 200.0, rng), tone(4800, 310.0, rng)]))
    loss_source = torch.from_numpy(np.stack([tone(4000, 250.0, rng), tone(4000, 410.0, rng)]))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "audio")
        write_audio_corpus(data, TRAIN_LENGTHS)
        for pos_enc_type in ("abs", "rope", "rel_pos"):
            work = os.path.join(tmp, f"conformer_{pos_enc_type}")
            conformer_fixture(pos_enc_type, data, work, out_dir, source)
        for name, flags in (("wav2vec1_cnn", WAV2VEC_FLAGS), ("vq_wav2vec_gumbel", VQ_GUMBEL_FLAGS),
                            ("vq_wav2vec_kmeans", kmeans_flags())):
            wav2vec_fixture(name, flags, data, os.path.join(tmp, name), out_dir, source, loss_source)
        lm_fixture(os.path.join(tmp, "lm"), out_dir)


if __name__ == "__main__":
    generator_main(__doc__.splitlines()[0], generate)
