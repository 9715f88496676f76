"""Genuine fairseq 0.12.2 HuBERT fixtures: ``hubert_base_librispeech.yaml`` pretraining on k-means-style labels
and ``base_10h.yaml`` CTC fine-tuning from it, each trained for two updates by ``fairseq-hydra-train``.

Run with the genuine-fairseq venv only (never imported by fairseq_lite)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/hubert_fixtures.py

- ``hubert_base_pretrain``: tiny sizes (CNN of 7 layers 32 wide, stride 320; 2 layers of 32, 2 heads), ``km``
  labels at 50 Hz from a dictionary of K=8 units. Recorded in eval mode on a padded batch:
  ``extract_features`` at output_layer 1 and at the last layer; in train mode with every dropout and layerdrop 0:
  fairseq's hubert criterion (loss, logging output) with the time mask fairseq drew, and every gradient.
- ``hubert_ctc_base_10h``: fine-tuned from it (task hubert_pretraining with fine_tuning, ``ltr`` labels).
  Recorded in eval mode on a padded batch: ``encoder_out``, ``get_normalized_probs`` and the CTC loss.
  fairseq's HubertEncoder reads the pretraining label dictionaries at load time; fairseq_lite must not.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fairseq_dir, generator_main, hydra_train, write_audio_corpus, write_fixture  # noqa: E402
from wav2vec2_fixtures import (NO_DROPOUT, RUN_OVERRIDES, TEXTS, command, letters, load, pretrain_inputs,  # noqa: E402
                               train_step, write_finetune_data)

NUM_UNITS = 8
LABEL_RATE = 50
TINY_HUBERT = ["model.label_rate=50", "model.final_dim=16",
               "model.conv_feature_layers='[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2'",
               "+model.encoder_layers=2", "+model.encoder_embed_dim=32", "+model.encoder_ffn_embed_dim=64",
               "+model.encoder_attention_heads=2", "+model.conv_pos=16", "+model.conv_pos_groups=4"]
PRETRAIN_OVERRIDES = ["task.labels=[km]", "dataset.max_tokens=60000", "task.min_sample_size=2000",
                      "lr_scheduler.warmup_updates=1", "common.tensorboard_logdir=null"]
FINETUNE_OVERRIDES = ["model.mask_channel_length=4", "common.tensorboard_logdir=null"]
PRETRAIN_LENGTHS = [8000, 9600, 7200, 8800, 8400, 9200]


def recipe_dir(kind: str) -> str:
    """fairseq's shipped ``examples/hubert/config/<kind>`` folder (pretrain or finetune)."""
    return os.path.join(fairseq_dir(), "examples", "hubert", "config", kind)


def num_labels(num_samples: int) -> int:
    """Label frames of an utterance at ``LABEL_RATE`` (what fairseq's length check expects: duration x rate)."""
    return int(np.ceil(num_samples / 16_000 * LABEL_RATE))


def write_km_labels(folder: str, lengths: Sequence[int]) -> None:
    """``{train,valid}.km`` (one line of unit ids per utterance, seeded) and ``dict.km.txt`` (``i 1`` lines)."""
    rng = np.random.RandomState(11)
    lines = [" ".join(str(u) for u in rng.randint(0, NUM_UNITS, num_labels(n))) for n in lengths]
    for split in ("train", "valid"):
        with open(os.path.join(folder, f"{split}.km"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    with open(os.path.join(folder, "dict.km.txt"), "w") as f:
        f.write("".join(f"{i} 1\n" for i in range(NUM_UNITS)))


def pretrain_targets(task: Any, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Seeded unit labels for the padded batch (B x labels of the longest), as dictionary indices."""
    rng = np.random.RandomState(13)
    size = num_labels(inputs["source"].size(1))
    units = rng.randint(0, NUM_UNITS, (inputs["source"].size(0), size))
    dictionary = task.dictionaries[0]
    return torch.tensor([[dictionary.index(str(u)) for u in row] for row in units], dtype=torch.long)


def pretrain_outputs(checkpoint: str, inputs: Dict[str, torch.Tensor], target: torch.Tensor) -> Dict[str, Any]:
    """Eval: extract_features at output_layer 1 and the last; train (no dropout): criterion, mask, gradients."""
    from fairseq.models.hubert import hubert as fairseq_hubert

    model, _, _ = load(checkpoint)
    source, padding_mask = inputs["source"], inputs["padding_mask"]
    with torch.no_grad():
        layer_1, _ = model.extract_features(source, padding_mask, mask=False, output_layer=1)
        x, frame_padding_mask = model.extract_features(source, padding_mask, mask=False)
    out: Dict[str, Any] = {"layer_1": layer_1, "x": x, "frame_padding_mask": frame_padding_mask}
    model, cfg, task = load(checkpoint, NO_DROPOUT)
    model.train()
    criterion = task.build_criterion(cfg.criterion).train()
    sample = {"id": torch.arange(2), "net_input": dict(inputs), "target_list": [target]}
    step, (masks,) = train_step(model, criterion, sample, [(fairseq_hubert, "compute_mask_indices")])
    if len(masks) != 1:
        raise SystemExit(f"expected one mask call, got {len(masks)}")
    out.update(step)
    out["mask_indices"] = masks[0]
    return out


def pretrain_fixture(data: str, work: str, out_dir: str) -> str:
    """Train, record and write ``hubert_base_pretrain``; returns the checkpoint fairseq wrote."""
    recipe = "hubert_base_librispeech"
    overrides = [f"task.data={data}", f"task.label_dir={data}", *RUN_OVERRIDES, *PRETRAIN_OVERRIDES, *TINY_HUBERT]
    checkpoint = hydra_train(recipe_dir("pretrain"), recipe, overrides, work)
    _, _, task = load(checkpoint)
    inputs = pretrain_inputs(normalize=False)
    target = pretrain_targets(task, inputs)
    outputs = pretrain_outputs(checkpoint, inputs, target)
    write_fixture(os.path.join(out_dir, "hubert_base_pretrain"), checkpoint, {**inputs, "target": target}, outputs, {
        "command": command("pretrain", recipe, overrides, family="hubert"), "train_arg_overrides": NO_DROPOUT,
        "recorded": "eval mode on the padded batch (source, padding_mask): layer_1 = extract_features(source, "
                    "padding_mask, output_layer=1)[0]; x, frame_padding_mask = extract_features(source, "
                    "padding_mask). Train mode, loaded with train_arg_overrides: loss, sample_size, log_* = "
                    "fairseq's hubert criterion on {net_input: source, padding_mask; target_list: [target]} "
                    "(target = dictionary indices of dict.km.txt); mask_indices = what compute_mask_indices "
                    "returned (B x T); grad.<name> = every parameter's gradient",
    })
    return checkpoint


def finetune_sample(task: Any) -> Dict[str, Any]:
    """Utterances 0 and 1 of TEXTS as a padded batch (the audio zero-padded, never cropped) with targets."""
    rng = np.random.RandomState(17)
    lengths = [4000, 3200]
    source = torch.zeros(2, max(lengths))
    padding_mask = torch.ones(2, max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.from_numpy(0.3 * rng.randn(n).astype(np.float32))
        padding_mask[i, :n] = False
    dictionary = task.target_dictionary
    rows = [dictionary.encode_line(letters(t), append_eos=False, add_if_not_exist=False).long() for t in TEXTS[:2]]
    target = torch.full((2, max(len(r) for r in rows)), dictionary.pad(), dtype=torch.long)
    for i, row in enumerate(rows):
        target[i, : len(row)] = row
    target_lengths = torch.tensor([len(r) for r in rows])
    return {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding_mask},
            "target": target, "target_lengths": target_lengths, "ntokens": int(target_lengths.sum())}


def finetune_fixture(data: str, pretrained: str, work: str, out_dir: str) -> None:
    """Fine-tune from ``pretrained``; record emissions and the CTC loss in eval mode; write the fixture."""
    recipe = "base_10h"
    overrides = [f"task.data={data}", f"task.label_dir={data}", f"model.w2v_path={pretrained}", *RUN_OVERRIDES,
                 *FINETUNE_OVERRIDES]
    checkpoint = hydra_train(recipe_dir("finetune"), recipe, overrides, work)
    model, cfg, task = load(checkpoint)
    sample = finetune_sample(task)
    criterion = task.build_criterion(cfg.criterion).eval()
    with torch.no_grad():
        net_output = model(**sample["net_input"])
        outputs = {"encoder_out": net_output["encoder_out"].clone(), "frame_padding_mask": net_output["padding_mask"],
                   "lprobs": model.get_normalized_probs(net_output, log_probs=True)}
        loss, sample_size, logging_output = criterion(model, sample)
    outputs.update(loss=loss, sample_size=np.float32(sample_size))
    inputs = {**sample["net_input"], "target": sample["target"], "target_lengths": sample["target_lengths"],
              "id": sample["id"], "ntokens": np.int64(sample["ntokens"])}
    folder = os.path.join(out_dir, "hubert_ctc_base_10h")
    write_fixture(folder, checkpoint, inputs, outputs, {
        "command": command("finetune", recipe, overrides, family="hubert"), "pretrained": "hubert_base_pretrain",
        "texts": TEXTS[:2], "ctc_log": {k: float(v) for k, v in logging_output.items() if np.isscalar(v)},
        "recorded": "inputs = a padded batch of two utterances (source zero-padded, padding_mask, target = "
                    "dict.ltr.txt indices padded with <pad>, target_lengths, ntokens). Eval mode: encoder_out "
                    "(T x B x V), frame_padding_mask, lprobs = get_normalized_probs(log_probs=True) (fairseq "
                    "does not blank padded frames); loss, sample_size = fairseq's ctc criterion on the batch",
    })
    shutil.copyfile(os.path.join(data, "dict.ltr.txt"), os.path.join(folder, "dict.ltr.txt"))


def generate(out_dir: str) -> None:
    """Write both fixtures of this module into ``out_dir``."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        audio = os.path.join(tmp, "audio")
        write_audio_corpus(audio, PRETRAIN_LENGTHS)
        write_km_labels(audio, PRETRAIN_LENGTHS)
        pretrained = pretrain_fixture(audio, os.path.join(tmp, "hubert_base_pretrain"), out_dir)
        labelled = os.path.join(tmp, "labelled")
        write_finetune_data(labelled)
        finetune_fixture(labelled, pretrained, os.path.join(tmp, "hubert_ctc_base_10h"), out_dir)


if __name__ == "__main__":
    generator_main(__doc__.splitlines()[0], generate)
