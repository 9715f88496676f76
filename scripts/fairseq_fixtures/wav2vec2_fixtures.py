"""Genuine fairseq 0.12.2 wav2vec 2.0 fixtures: base- and large-style pretraining, and CTC fine-tuning from
``base_10m.yaml`` and ``vox_10h.yaml``, each trained for two updates by ``fairseq-hydra-train``.

Run with the genuine-fairseq venv only (never imported by fairseq_lite)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/wav2vec2_fixtures.py

Every fixture lands in ``tests/fixtures/fairseq/<name>/``: ``checkpoint.pt`` (fairseq's ``checkpoint_last.pt``,
copied byte for byte), ``inputs.npz``, ``outputs.npz`` and ``meta.json`` (versions, the command, what was
recorded). ``tests/test_fairseq_genuine_wav2vec2.py`` loads them with fairseq_lite and compares.

- ``w2v2_base_pretrain`` / ``w2v2_large_pretrain``: fairseq's ``wav2vec2_base_librispeech.yaml`` /
  ``wav2vec2_large_librivox.yaml`` (layer_norm_first, extractor_mode layer_norm, conv_bias, no dropout or
  layerdrop, normalize) with tiny sizes. Recorded in eval mode on a padded batch: the CNN features, each
  layer's output, the final ``x``, the quantizer's codes; in train mode with every dropout and layerdrop set
  to 0 (``arg_overrides`` at load) and the quantizer in eval mode (its Gumbel noise is drawn from torch's RNG,
  which no other implementation can replay; eval mode picks the argmax code, deterministically): the
  contrastive loss of fairseq's criterion with the mask (``compute_mask_indices``) and the negatives
  (``sample_negatives``) fairseq drew, the logits, and the gradient of every parameter.
- ``w2v2_ctc_base_10m`` / ``w2v2_ctc_vox_10h``: fine-tuned from the pretraining fixtures above (task
  audio_finetuning, a letter dictionary, ``.ltr`` labels). Recorded on a batch of fairseq's own collater:
  in eval mode ``encoder_out``, ``padding_mask``, ``get_logits``, and each utterance alone (what infer.py
  sees with one utterance per batch; its wav file is copied into ``audio/``) with the viterbi hypothesis
  fairseq's ``Dictionary.string`` and ``post_process`` make of it; in train mode with dropout and layerdrop 0:
  the CTC loss and every gradient with the time and channel masks fairseq drew, once at the stored update
  count (the recipes' ``freeze_finetune_updates`` keeps the wav2vec 2.0 network frozen, so only ``proj`` has
  gradients) and once with the model's update count set to ``freeze_finetune_updates`` (then everything but
  the CNN, frozen by ``feature_grad_mult: 0``, has gradients).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (fairseq_dir, generator_main, hydra_train, recording_all, tone,  # noqa: E402
                    write_audio_corpus, write_fixture)

#: Every dropout and layerdrop of the pretraining and fine-tuning configs, zeroed for train-mode outputs.
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0,
              "dropout_features": 0.0, "encoder_layerdrop": 0.0, "final_dropout": 0.0, "layerdrop": 0.0}

#: The CPU / one-process / two-updates switches every run here gets.
RUN_OVERRIDES = ["common.cpu=true", "common.fp16=false", "common.log_interval=1", "common.seed=1",
                 "distributed_training.distributed_world_size=1", "optimization.max_update=2",
                 "dataset.num_workers=0"]
#: Tiny sizes: CNN 32 wide (stride 20), 2 layers of 32, 4 heads, 2 x 16 codewords, 20 negatives.
TINY_MODEL = ["model.encoder_embed_dim=32", "model.final_dim=16", "+model.conv_feature_layers='[(32, 10, 5)] + "
              "[(32, 3, 2)] * 2'", "+model.latent_vars=16", "+model.num_negatives=20"]
PRETRAIN_SIZES = {
    "wav2vec2_base_librispeech": ["+model.encoder_layers=2", "+model.encoder_ffn_embed_dim=64",
                                  "+model.encoder_attention_heads=4"],
    "wav2vec2_large_librivox": ["model.encoder_layers=2", "model.encoder_ffn_embed_dim=64",
                                "model.encoder_attention_heads=4"],
}
PRETRAIN_OVERRIDES = ["dataset.max_tokens=60000", "task.min_sample_size=2000", "lr_scheduler.warmup_updates=1"]
#: Fine-tuning: the recipes' validation subset is dev_other; their 64-channel masks scaled to 32 channels.
FINETUNE_OVERRIDES = ["dataset.valid_subset=valid", "model.mask_channel_length=4"]

#: fixture name → recipe yaml (pretraining); fixture name → (recipe yaml, pretraining fixture it starts from)
PRETRAININGS = {"w2v2_base_pretrain": "wav2vec2_base_librispeech", "w2v2_large_pretrain": "wav2vec2_large_librivox"}
FINETUNINGS = {"w2v2_ctc_base_10m": ("base_10m", "w2v2_base_pretrain"),
               "w2v2_ctc_vox_10h": ("vox_10h", "w2v2_large_pretrain")}

PRETRAIN_LENGTHS = [8000, 9600, 7200, 8800, 8400, 9200]
TEXTS = ["HELLO WORLD", "A CAT SAT", "THE DOG RAN HOME", "ON A MAT"]
FINETUNE_LENGTHS = [4000, 3200, 4400, 3600]


def recipe_dir(kind: str) -> str:
    """fairseq's shipped ``examples/wav2vec/config/<kind>`` folder (pretraining or finetuning)."""
    return os.path.join(fairseq_dir(), "examples", "wav2vec", "config", kind)


def load(checkpoint: str, arg_overrides: Optional[Dict[str, Any]] = None) -> Tuple[Any, Any, Any]:
    """fairseq's own ``load_model_ensemble_and_task``: (model in eval mode, cfg, task)."""
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=arg_overrides)
    return models[0].eval(), cfg, task


def command(kind: str, recipe: str, overrides: Sequence[str], family: str = "wav2vec") -> str:
    """The ``fairseq-hydra-train`` command line of a run (recipe in ``examples/<family>/config/<kind>``), its
    temporary paths shown as placeholders."""
    shown = []
    for override in overrides:
        key = override.split("=")[0]
        hidden = key in ("task.data", "task.label_dir", "model.w2v_path")
        shown.append(f"{key}=<{key.split('.')[-1]}>" if hidden else override)
    return shlex.join(["fairseq-hydra-train", "--config-dir", f"fairseq/examples/{family}/config/{kind}",
                       "--config-name", recipe, *shown])


def logged_numbers(logging_output: Dict[str, Any], prefix: str) -> Dict[str, np.float32]:
    """The numeric entries of a criterion's logging output as ``{prefix}log_<key>`` scalars."""
    out = {}
    for key, value in logging_output.items():
        if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1):
            out[f"{prefix}log_{key}"] = np.float32(float(value))
    return out


def gradients(model: Any, prefix: str) -> Dict[str, torch.Tensor]:
    """``{prefix}grad.<name>``: every parameter gradient after a backward pass (parameters without one are left
    out, so the test also checks which ones fairseq left frozen)."""
    return {f"{prefix}grad.{name}": p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def train_step(model: Any, criterion: Any, sample: Dict[str, Any], draws: Sequence[Tuple[Any, str]],
               prefix: str = "") -> Tuple[Dict[str, Any], List[List[Any]]]:
    """One forward/backward of fairseq's criterion in train mode (seeded): loss, sample size, logging values
    and gradients under ``prefix``, plus what ``draws`` ((object, method) pairs) returned while it ran."""
    torch.manual_seed(7)
    np.random.seed(7)
    model.zero_grad()
    with recording_all(list(draws)) as calls:
        loss, sample_size, logging_output = criterion(model, sample)
    loss.backward()
    out = {f"{prefix}loss": loss.detach(), f"{prefix}sample_size": np.float32(sample_size),
           **logged_numbers(logging_output, prefix), **gradients(model, prefix)}
    return out, calls


# -- pretraining ---------------------------------------------------------------------------------------------


def pretrain_inputs(normalize: bool) -> Dict[str, torch.Tensor]:
    """Two fixed utterances of 4000 and 3200 samples, zero-padded to 4000, with the sample-level padding mask
    (each utterance normalised to zero mean and unit variance when the recipe's task normalises)."""
    rng = np.random.RandomState(3)
    rows = [tone(4000, 230.0, rng), tone(3200, 370.0, rng)]
    if normalize:
        rows = [(r - r.mean()) / np.sqrt(r.var() + 1e-5) for r in rows]
    source = torch.zeros(2, 4000)
    padding_mask = torch.ones(2, 4000, dtype=torch.bool)
    for i, row in enumerate(rows):
        source[i, : len(row)] = torch.from_numpy(row.astype(np.float32))
        padding_mask[i, : len(row)] = False
    return {"source": source, "padding_mask": padding_mask}


def pretrain_eval_outputs(model: Any, inputs: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """Eval mode: CNN features (B×C×T), ``layer_i`` = extract_features(layer=i)["x"] (B×T×C), the final
    ``x``, ``unmasked_features``, ``frame_padding_mask``, and the quantizer's output and codes."""
    source, padding_mask = inputs["source"], inputs["padding_mask"]
    with torch.no_grad():
        out = {"features": model.feature_extractor(source)}
        for i in range(len(model.encoder.layers)):
            out[f"layer_{i}"] = model.extract_features(source, padding_mask, mask=False, layer=i)["x"]
        result = model.extract_features(source, padding_mask, mask=False)
        out.update(x=result["x"], unmasked_features=result["features"], frame_padding_mask=result["padding_mask"])
        out["quantized"], out["codes"] = model.quantize(source)
    return out


def pretrain_train_outputs(checkpoint: str, inputs: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """Train mode, no dropout, quantizer in eval mode: fairseq's criterion, its mask, negatives and logits."""
    from fairseq.models.wav2vec import wav2vec2 as fairseq_wav2vec2

    model, cfg, task = load(checkpoint, NO_DROPOUT)
    model.train()
    model.quantizer.eval()
    criterion = task.build_criterion(cfg.criterion).train()
    sample = {"id": torch.arange(2), "net_input": dict(inputs)}
    draws = [(fairseq_wav2vec2, "compute_mask_indices"), (model, "sample_negatives"), (model, "get_logits")]
    out, (masks, negatives, logits) = train_step(model, criterion, sample, draws)
    if (len(masks), len(negatives), len(logits)) != (1, 1, 1):
        raise SystemExit(f"expected one mask, negatives and logits call, got {len(masks), len(negatives), len(logits)}")
    out.update(mask_indices=masks[0], negative_indices=negatives[0][1], logits=logits[0].detach())
    return out


def pretrain_fixture(name: str, data: str, work: str, out_dir: str) -> str:
    """Train, record and write one pretraining fixture; returns the checkpoint fairseq wrote."""
    recipe = PRETRAININGS[name]
    overrides = [f"task.data={data}", *RUN_OVERRIDES, *PRETRAIN_OVERRIDES, *TINY_MODEL, *PRETRAIN_SIZES[recipe]]
    checkpoint = hydra_train(recipe_dir("pretraining"), recipe, overrides, work)
    model, cfg, _ = load(checkpoint)
    inputs = pretrain_inputs(bool(cfg.task.normalize))
    outputs = {**pretrain_eval_outputs(model, inputs), **pretrain_train_outputs(checkpoint, inputs)}
    write_fixture(os.path.join(out_dir, name), checkpoint, inputs, outputs, {
        "command": command("pretraining", recipe, overrides), "train_arg_overrides": NO_DROPOUT,
        "recorded": "eval mode on the padded batch (source, padding_mask): features = feature_extractor(source) "
                    "(B x C x T); layer_i = extract_features(source, padding_mask, layer=i)['x'] (B x T x C); "
                    "x, unmasked_features, frame_padding_mask = extract_features(source, padding_mask); "
                    "quantized, codes = quantize(source). Train mode, loaded with train_arg_overrides, quantizer "
                    "in eval mode: loss, sample_size, log_* = fairseq's wav2vec criterion on {source, "
                    "padding_mask}; logits = get_logits; mask_indices = what compute_mask_indices returned "
                    "(B x T); negative_indices = sample_negatives' indices (B x M*N, flat into the B x M masked "
                    "targets); grad.<name> = every parameter's gradient",
        "notes": "the quantizer runs in eval mode for the train-mode outputs: in train mode it adds Gumbel noise "
                 "from torch's RNG, which fairseq_lite cannot replay draw for draw",
    })
    return checkpoint


# -- CTC fine-tuning -----------------------------------------------------------------------------------------


def letters(text: str) -> str:
    """fairseq's ``.ltr`` form of a transcript: letters separated by spaces, ``|`` after each word."""
    return " ".join(" ".join(word) + " |" for word in text.split())


def write_finetune_data(folder: str) -> None:
    """A tiny audio_finetuning corpus: wavs, train/valid manifests, ``.ltr``/``.wrd`` labels and
    ``dict.ltr.txt`` (fairseq's ``symbol count`` lines, most frequent first)."""
    write_audio_corpus(folder, FINETUNE_LENGTHS, seed=5)
    ltr = [letters(t) for t in TEXTS]
    for split in ("train", "valid"):
        for ext, lines in (("ltr", ltr), ("wrd", TEXTS)):
            with open(os.path.join(folder, f"{split}.{ext}"), "w") as f:
                f.write("".join(line + "\n" for line in lines))
    counts: Dict[str, int] = {}
    for symbol in " ".join(ltr).split():
        counts[symbol] = counts.get(symbol, 0) + 1
    with open(os.path.join(folder, "dict.ltr.txt"), "w") as f:
        f.write("".join(f"{s} {n}\n" for s, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))))


def viterbi_hypothesis(logits: torch.Tensor, dictionary: Any) -> Tuple[str, str]:
    """What fairseq's viterbi decoding makes of T×V logits (no transitions: the best unit per frame, repeats
    merged, blank dropped): infer.py's ``hypo.units`` (``Dictionary.string``) and ``hypo.word``
    (``post_process(..., "letter")``) texts."""
    from fairseq.data.data_utils import post_process

    units = torch.unique_consecutive(logits.argmax(-1))
    text = dictionary.string(units[units != dictionary.bos()])
    return text, post_process(text, "letter")


def ctc_eval_outputs(model: Any, task: Any, sample: Dict[str, Any]
                     ) -> Tuple[Dict[str, Any], List[Tuple[str, str]]]:
    """Eval mode: encoder_out (T×B×V), padding_mask, get_logits on the batch; each utterance alone
    (``single_logits_i``, T×V) and its viterbi hypothesis."""
    net_input = sample["net_input"]
    with torch.no_grad():
        net_output = model(**net_input)
        out = {"encoder_out": net_output["encoder_out"].clone(), "frame_padding_mask": net_output["padding_mask"]}
        out["logits"] = model.get_logits(net_output).clone()  # fairseq's get_logits writes into encoder_out
        hypotheses = []
        for i in range(net_input["source"].size(0)):
            length = int((~net_input["padding_mask"][i]).sum())
            single = model.get_logits(model(source=net_input["source"][i : i + 1, :length], padding_mask=None))[:, 0]
            out[f"single_logits_{i}"] = single.clone()
            hypotheses.append(viterbi_hypothesis(single, task.target_dictionary))
    return out, hypotheses


def ctc_train_outputs(checkpoint: str, sample: Dict[str, Any]) -> Dict[str, Any]:
    """Train mode, no dropout: fairseq's CTC criterion, the masks it drew, the log-probs and gradients, at the
    stored update count and (``unfrozen_``) at ``freeze_finetune_updates``."""
    from fairseq.models.wav2vec import wav2vec2 as fairseq_wav2vec2

    model, cfg, task = load(checkpoint, NO_DROPOUT)
    model.train()
    criterion = task.build_criterion(cfg.criterion).train()
    out: Dict[str, Any] = {}
    for prefix in ("", "unfrozen_"):
        if prefix:
            model.set_num_updates(cfg.model.freeze_finetune_updates)
        draws = [(fairseq_wav2vec2, "compute_mask_indices"), (model, "get_normalized_probs")]
        step, (masks, lprobs) = train_step(model, criterion, sample, draws, prefix)
        if (len(masks), len(lprobs)) != (2, 1):
            raise SystemExit(f"expected a time and a channel mask and one log-prob call, got {len(masks), len(lprobs)}")
        out.update(step)
        out.update({f"{prefix}mask_indices": masks[0], f"{prefix}mask_channel_indices": masks[1],
                    f"{prefix}lprobs": lprobs[0].detach()})
    return out


def finetune_sample(task: Any) -> Dict[str, Any]:
    """The first two validation utterances as fairseq's audio_finetuning collater batches them."""
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return dataset.collater([dataset[0], dataset[1]])


def finetune_fixture(name: str, data: str, pretrained: str, work: str, out_dir: str) -> None:
    """Fine-tune from ``pretrained``, record and write one CTC fixture (plus its two wavs and dict.ltr.txt)."""
    recipe, _ = FINETUNINGS[name]
    overrides = [f"task.data={data}", f"model.w2v_path={pretrained}", *RUN_OVERRIDES, *FINETUNE_OVERRIDES]
    checkpoint = hydra_train(recipe_dir("finetuning"), recipe, overrides, work)
    model, cfg, task = load(checkpoint)
    sample = finetune_sample(task)
    outputs, hypotheses = ctc_eval_outputs(model, task, sample)
    outputs.update(ctc_train_outputs(checkpoint, sample))
    inputs = {"source": sample["net_input"]["source"], "padding_mask": sample["net_input"]["padding_mask"],
              "target": sample["target"], "target_lengths": sample["target_lengths"], "id": sample["id"],
              "ntokens": np.int64(sample["ntokens"])}
    folder = os.path.join(out_dir, name)
    write_fixture(folder, checkpoint, inputs, outputs, {
        "command": command("finetuning", recipe, overrides), "pretrained": FINETUNINGS[name][1],
        "train_arg_overrides": NO_DROPOUT, "audio": [f"audio/u{i}.wav" for i in range(2)],
        "texts": TEXTS[:2], "ltr": [letters(t) for t in TEXTS[:2]],
        "viterbi_units": [units for units, _ in hypotheses], "viterbi_words": [words for _, words in hypotheses],
        "recorded": "inputs = fairseq's audio_finetuning collater on valid utterances 0 and 1 (source, "
                    "padding_mask, target padded with <pad>, target_lengths, id, ntokens). Eval mode: "
                    "encoder_out (T x B x V), frame_padding_mask, logits = get_logits; single_logits_i = "
                    "get_logits of utterance i alone (T x V; audio/u{i}.wav is its file); viterbi_units / "
                    "viterbi_words = its best path through fairseq's Dictionary.string and post_process "
                    "letter. Train mode, loaded with train_arg_overrides: loss, sample_size, log_* = fairseq's "
                    "ctc criterion on the batch; mask_indices (B x T) and mask_channel_indices (B x C) = what "
                    "compute_mask_indices returned; lprobs = get_normalized_probs (T x B x V); grad.<name> = "
                    "every gradient; the same with the prefix unfrozen_ after "
                    "model.set_num_updates(freeze_finetune_updates)",
    })
    shutil.copyfile(os.path.join(data, "dict.ltr.txt"), os.path.join(folder, "dict.ltr.txt"))
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    for i in range(2):
        shutil.copyfile(os.path.join(data, f"u{i}.wav"), os.path.join(folder, "audio", f"u{i}.wav"))


def generate(out_dir: str) -> None:
    """Write every fixture of this module into ``out_dir``."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # as the training runs and the tests: the same float32 summation order
    with tempfile.TemporaryDirectory() as tmp:
        audio = os.path.join(tmp, "audio")
        write_audio_corpus(audio, PRETRAIN_LENGTHS)
        checkpoints = {name: pretrain_fixture(name, audio, os.path.join(tmp, name), out_dir) for name in PRETRAININGS}
        labelled = os.path.join(tmp, "labelled")
        write_finetune_data(labelled)
        for name, (_, pretrained) in FINETUNINGS.items():
            finetune_fixture(name, labelled, checkpoints[pretrained], os.path.join(tmp, name), out_dir)


if __name__ == "__main__":
    generator_main(__doc__.splitlines()[0], generate)
