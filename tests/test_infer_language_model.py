"""language_modeling task + cross_entropy criterion: blocks as fairseq cuts them, loss in bits, and a tiny
transformer_lm trained with fairseq-hydra-train whose checkpoint changes fairseqlm decoding."""

import math
import os

import numpy as np
import pytest
import torch

from decoding_helpers import LEXICON_WORDS, SENTENCE, emissions_for, letter_dictionary, write_lexicon
from fairseq_lite import checkpoint_utils
from fairseq_lite.cli import hydra_train
from fairseq_lite.criterions.cross_entropy import CrossEntropyCriterion
from fairseq_lite.decoding import build_decoder
from fairseq_lite.decoding.flashlight import DecoderConfig
from fairseq_lite.errors import ConfigError, DataError
from fairseq_lite.tasks import setup_task
from fairseq_lite.tasks.language_modeling import block_bounds

TRAIN_TEXT = ["THE CAT SEES THE DOG", "THE DOG SEES THE CAT", "A CAT SEES A DOG", "THE CAT SEES A DOG"]

LM_YAML = """\
# @package _group_
common:
  log_format: json
  log_interval: 20
  seed: 3
task:
  _name: language_modeling
  data: {data}
  tokens_per_sample: 32
  sample_break_mode: eos
model:
  _name: transformer_lm
  decoder_embed_dim: 32
  decoder_output_dim: 32
  decoder_input_dim: 32
  decoder_ffn_embed_dim: 64
  decoder_layers: 2
  decoder_attention_heads: 4
  dropout: 0.0
criterion: cross_entropy
dataset:
  batch_size: 4
  required_batch_size_multiple: 1
  num_workers: 0
  disable_validation: true
optimization:
  max_update: 120
  lr: [0.003]
optimizer:
  _name: adam
  adam_betas: (0.9,0.98)
lr_scheduler: fixed
checkpoint:
  save_dir: {save_dir}
  no_epoch_checkpoints: true
  save_interval: 1000
distributed_training:
  distributed_world_size: 1
"""


def write_text(folder, lines, split="train", dictionary=True):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if dictionary:
        with open(os.path.join(folder, "dict.txt"), "w") as f:
            for word in LEXICON_WORDS:
                f.write(f"{word} 1\n")


def test_block_bounds_follow_each_sample_break_mode():
    lengths = np.array([3, 2, 4, 2])  # lines with eos; a document ends after the second line
    breaks = np.array([False, True, False, False])
    assert block_bounds(lengths, breaks, 4, "none").tolist() == [[0, 4], [4, 8], [8, 11]]
    assert block_bounds(lengths, breaks, 4, "eos").tolist() == [[0, 3], [3, 5], [5, 9], [9, 11]]
    assert block_bounds(lengths, breaks, 5, "complete").tolist() == [[0, 5], [5, 9], [9, 11]]
    assert block_bounds(lengths, breaks, 6, "complete").tolist() == [[0, 5], [5, 11]]
    assert block_bounds(lengths, breaks, 9, "complete_doc").tolist() == [[0, 5], [5, 11]]


def test_dataset_shifts_targets_and_loss_is_in_bits(tmp_path):
    write_text(tmp_path, ["THE CAT", "", "A DOG SEES"], dictionary=False)  # dict.txt built from the text
    task = setup_task({"_name": "language_modeling", "data": str(tmp_path), "sample_break_mode": "complete_doc",
                       "tokens_per_sample": 16})
    d = task.dictionary
    assert {"THE", "CAT", "A", "DOG", "SEES"} <= set(d.symbols)
    task.load_dataset("train")
    ds = task.dataset("train")
    ids = lambda words: [d.index(w) for w in words.split()]  # noqa: E731
    first, second = ds[0], ds[1]
    assert first["target"].tolist() == ids("THE CAT") + [d.eos()]
    assert first["source"].tolist() == [d.eos()] + ids("THE CAT")
    assert second["source"].tolist() == [d.eos()] + ids("A DOG SEES")
    sample = ds.collater([first, second])
    assert sample["ntokens"] == 7 and sample["target"][0, -1].item() == d.pad()

    torch.manual_seed(0)
    model = task.build_model({"_name": "transformer_lm", "decoder_embed_dim": 16, "decoder_output_dim": 16,
                              "decoder_input_dim": 16, "decoder_ffn_embed_dim": 32, "decoder_layers": 1,
                              "decoder_attention_heads": 2, "tokens_per_sample": 16,
                              "max_target_positions": 16})
    model.eval()
    criterion = task.build_criterion("cross_entropy")
    assert isinstance(criterion, CrossEntropyCriterion)
    loss, sample_size, log = criterion(model, sample)
    lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    expected = -sum(lprobs[b, t, sample["target"][b, t]] for b in range(2) for t in range(4)
                    if sample["target"][b, t] != d.pad())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and sample_size == 7
    shown = CrossEntropyCriterion.reduce_metrics([log])
    assert shown["loss"] == pytest.approx(expected.item() / 7 / math.log(2), abs=1e-3)
    assert shown["ppl"] == pytest.approx(2 ** (expected.item() / 7 / math.log(2)), rel=1e-2)


def test_unsupported_options_and_missing_text_are_named(tmp_path):
    write_text(tmp_path, TRAIN_TEXT)
    task = setup_task({"_name": "language_modeling", "data": str(tmp_path), "add_bos_token": True})
    with pytest.raises(ConfigError, match="add_bos_token"):
        task.load_dataset("train")
    task = setup_task({"_name": "language_modeling", "data": str(tmp_path)})
    with pytest.raises(DataError, match="valid.txt"):
        task.load_dataset("valid")


def test_lm_trained_with_fairseq_hydra_train_changes_fairseqlm_decoding(tmp_path):
    data, save_dir = tmp_path / "lm_data", tmp_path / "lm_ckpt"
    write_text(data, TRAIN_TEXT * 2)
    (tmp_path / "lm.yaml").write_text(LM_YAML.format(data=data, save_dir=save_dir))
    assert hydra_train.main(["--config-dir", str(tmp_path), "--config-name", "lm"]) == 0
    lm_path = str(save_dir / "checkpoint_last.pt")
    os.remove(data / "dict.txt")  # the checkpoint carries its dictionary
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([lm_path])
    lm, lm_dict = models[0].eval(), task.target_dictionary
    assert cfg.model.decoder_layers == 2 and "decoder.layers.1.fc1.weight" in lm.state_dict()
    assert lm_dict.symbols[4:] == LEXICON_WORDS

    lexicon = tmp_path / "lexicon.lst"
    write_lexicon(lexicon, LEXICON_WORDS)
    d = letter_dictionary()
    emissions, lengths = emissions_for([SENTENCE], d)

    def decode(lm_weight):
        config = DecoderConfig(beam=20, lm_weight=lm_weight, word_score=0.0, lexicon=str(lexicon))
        decoder = build_decoder("fairseqlm", d, config, lm_model=lm, lm_dict=lm_dict)
        return decoder.decode(emissions, lengths)[0][0].words

    assert decode(0.0) == ["THE", "CAT", "SEAS", "THE", "DOG"]
    assert decode(1.0) == SENTENCE.split()
