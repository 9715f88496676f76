"""task.precompute_mask_indices: the collater draws wav2vec 2.0's masks (fairseq's TPU yamls), the model uses them."""

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite.criterions import build_criterion
from fairseq_lite.dataclass.initialize import compose_config, finalize_config
from fairseq_lite.errors import ConfigError
from fairseq_lite.modules.conv_feature_extractor import conv_output_lengths
from fairseq_lite.modules.masking import Masker
from fairseq_lite.tasks import setup_task
from fairseq_lite.training.train import main

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "config", "pretraining")
RATE = 16_000
TINY_MODEL = {"_name": "wav2vec2", "quantize_targets": True, "final_dim": 16, "encoder_layers": 2,
              "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
              "conv_feature_layers": "[(24, 10, 5)] + [(24, 3, 2)] * 2", "conv_pos": 16, "conv_pos_groups": 4,
              "latent_vars": 10, "num_negatives": 5, "encoder_layerdrop": 0.0, "mask_channel_prob": 0.2,
              "mask_channel_length": 4}


def write_corpus(folder, lengths):
    rng = np.random.default_rng(0)
    for i, n in enumerate(lengths):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * np.arange(n) / RATE) + rng.normal(0, 0.05, n)
        sf.write(folder / f"u{i}.wav", tone.astype(np.float32), RATE)
    (folder / "train.tsv").write_text(f"{folder}\n" + "".join(f"u{i}.wav\t{n}\n" for i, n in enumerate(lengths)))


def test_tpu_yaml_masks_padded_batches_in_the_collater(tmp_path, caplog):
    """fairseq's TPU yaml verbatim: masks for the padded batch's frame count, equal counts per row, nothing masked at
    or past a row's own CNN output length, channel masks from inferred_w2v_config (0.1) although the model's is 0;
    the difference is logged once; masks are reproducible per (seed, epoch, ids)."""
    lengths = [32000, 37000, 41000, 48000, 52000, 60000]
    write_corpus(tmp_path, lengths)
    cfg = finalize_config(compose_config(CONFIG_DIR, "wav2vec2_large_librivox_tpu", [f"task.data={tmp_path}"]))
    assert cfg.task.precompute_mask_indices is True and cfg.model.mask_channel_prob == 0
    task = setup_task(cfg.task)
    task.model_cfg = cfg.model  # what build_model records, without building 317M parameters
    with caplog.at_level(logging.WARNING):
        task.load_dataset("train")
        task.load_dataset("train")
    assert sum("mask_channel_prob=0.1 (model: 0.0)" in r.getMessage() for r in caplog.records) == 1
    dataset = task.datasets["train"]
    batch = dataset.collater([dataset[i] for i in range(6)])
    net_input = batch["net_input"]
    width = net_input["source"].shape[1]
    assert width in dataset.buckets  # num_batch_buckets: 3 → static widths
    layers = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    frames = int(conv_output_lengths(torch.tensor([width]), layers))
    mask = net_input["mask_indices"]
    assert mask.dtype == torch.bool and tuple(mask.shape) == (6, frames)
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and counts[0] > 0
    valid = conv_output_lengths(torch.tensor([min(n, 250000) for n in lengths]), layers)
    assert valid.min() < frames  # padded rows exist
    assert not (mask & (torch.arange(frames)[None] >= valid[:, None])).any()
    channels = net_input["mask_channel_indices"]
    assert tuple(channels.shape) == (6, frames, 1024) and (channels == channels[:, :1]).all() and channels.any()
    again = dataset.collater([dataset[i] for i in range(6)])["net_input"]
    assert torch.equal(again["mask_indices"], mask) and torch.equal(again["mask_channel_indices"], channels)
    dataset.set_epoch(2)
    assert not torch.equal(dataset.collater([dataset[i] for i in range(6)])["net_input"]["mask_indices"], mask)


def _tiny_setup(data, **task):
    cfg = finalize_config({
        "common": {"seed": 1, "cpu": True},
        "task": {"_name": "audio_pretraining", "data": str(data), "enable_padding": True,
                 "precompute_mask_indices": True, **task},
        "model": TINY_MODEL,
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
    })
    task = setup_task(cfg.task)
    model = task.build_model(cfg.model)
    task.load_dataset("train")
    return task, model, build_criterion(cfg.criterion, task)


def test_loss_with_the_precomputed_mask_equals_the_model_drawing_that_mask(tmp_path, monkeypatch):
    """The criterion on a collated batch (masks in net_input) == the same batch without them, the model's own
    Masker drawing exactly those masks; another mask gives another loss (the passed one is used)."""
    write_corpus(tmp_path, [3000, 4000, 4400, 5000])
    task, model, criterion = _tiny_setup(tmp_path)
    model.eval()
    dataset = task.datasets["train"]
    sample = dataset.collater([dataset[i] for i in range(4)])
    given = sample["net_input"]
    assert set(given) == {"source", "padding_mask", "mask_indices", "mask_channel_indices"}
    torch.manual_seed(0)
    loss, sample_size, _ = criterion(model, sample)
    assert sample_size == sample["sample_size"] == int(given["mask_indices"].sum())

    monkeypatch.setattr(Masker, "time_mask", lambda *a, **k: given["mask_indices"])
    monkeypatch.setattr(Masker, "channel_mask", lambda *a, **k: given["mask_channel_indices"][:, :1])
    plain = {"id": sample["id"], "net_input": {k: given[k] for k in ("source", "padding_mask")}}  # no sample_size
    torch.manual_seed(0)
    drawn, drawn_size, _ = criterion(model, plain)
    assert drawn_size == sample_size
    torch.testing.assert_close(loss, drawn, rtol=1e-6, atol=1e-6)

    monkeypatch.undo()
    shifted = dict(sample, net_input=dict(given, mask_indices=given["mask_indices"].roll(1, dims=1)))
    torch.manual_seed(0)
    assert not torch.allclose(criterion(model, shifted)[0], loss)


def test_inferred_w2v_config_keys_fill_from_the_model_and_wrong_keys_fail(tmp_path):
    write_corpus(tmp_path, [3000, 4000])
    task, _, _ = _tiny_setup(tmp_path, inferred_w2v_config={"mask_prob": 0.3})
    masking = task.datasets["train"].mask_precompute
    assert masking.masker.mask_prob == 0.3 and masking.masker.mask_channel_prob == 0.2 and masking.channels == 32
    assert masking.conv_layers == ((24, 10, 5), (24, 3, 2), (24, 3, 2))
    with pytest.raises(ConfigError, match="unknown key.*mask_probability"):
        _tiny_setup(tmp_path, inferred_w2v_config={"mask_probability": 0.3})


def _train_config(data, save_dir, max_update):
    return finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "cpu": True},
        "task": {"_name": "audio_pretraining", "data": str(data), "max_sample_size": 4000, "enable_padding": True,
                 "num_batch_buckets": 2, "precompute_mask_indices": True,
                 "inferred_w2v_config": {"mask_prob": 0.5, "mask_channel_prob": 0.1}},
        "dataset": {"batch_size": 3, "num_workers": 0, "required_batch_size_multiple": 1, "disable_validation": True},
        "optimization": {"max_update": max_update, "lr": [5e-4], "clip_norm": 10.0},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": TINY_MODEL,
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 2},
    })


def _losses(save_dir):
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["tag"] == "train_inner"}


def test_training_with_precomputed_masks_resumes_exactly(tmp_path, monkeypatch):
    """The training loop with precomputed masks (the model never draws one) trains, and 2 + 2 updates after a
    resume equal 4 straight ones."""
    from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Model

    apply_mask = Wav2Vec2Model.apply_mask

    def given_masks_only(self, x, padding_mask, mask_indices=None, mask_channel_indices=None):
        assert mask_indices is not None and mask_channel_indices is not None
        return apply_mask(self, x, padding_mask, mask_indices, mask_channel_indices)

    monkeypatch.setattr(Wav2Vec2Model, "apply_mask", given_masks_only)
    write_corpus(tmp_path, [3000, 3400, 3800, 4200, 4600, 5000, 5400, 6000, 2600])
    main(_train_config(tmp_path, tmp_path / "straight", 4))
    main(_train_config(tmp_path, tmp_path / "resumed", 2))
    main(_train_config(tmp_path, tmp_path / "resumed", 4))
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)
    assert a["optimizer_history"][-1]["num_updates"] == 4
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(straight) == [1, 2, 3, 4] and all(np.isfinite(list(straight.values())))
    assert [resumed[u] for u in range(1, 5)] == [straight[u] for u in range(1, 5)]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
