"""Training a tiny real wav2vec 2.0 on real audio files through the training loop (pretraining stats, resume)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite.dataclass.initialize import finalize_config
from fairseq_lite.training.train import main

RATE = 16_000


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3000, 6000, size=12)
    t = np.arange(6000) / RATE
    for i, n in enumerate(lengths):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t[:n]) + rng.normal(0, 0.05, n)
        sf.write(tmp_path / f"u{i}.wav", tone.astype(np.float32), RATE)
    for split, ids in (("train", range(10)), ("valid", range(10, 12))):
        (tmp_path / f"{split}.tsv").write_text(f"{tmp_path}\n" + "".join(f"u{i}.wav\t{lengths[i]}\n" for i in ids))
    return tmp_path


def _config(data, save_dir, max_update):
    return finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "cpu": True},
        "task": {"_name": "audio_pretraining", "data": str(data), "max_sample_size": 4000, "min_sample_size": 2000},
        "dataset": {"max_tokens": 16000, "num_workers": 0, "required_batch_size_multiple": 1},
        "optimization": {"max_update": max_update, "lr": [5e-4], "update_freq": [2], "clip_norm": 10.0},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": {"_name": "wav2vec2", "quantize_targets": True, "final_dim": 16, "encoder_layers": 2,
                  "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
                  "conv_feature_layers": "[(24, 10, 5)] + [(24, 3, 2)] * 2", "conv_pos": 16, "conv_pos_groups": 4,
                  "latent_vars": 10, "num_negatives": 5, "encoder_layerdrop": 0.0,
                  "latent_temp": [2.0, 0.5, 0.9]},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10],
                      "log_keys": ["prob_perplexity", "code_perplexity", "temp"]},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6, "weight_decay": 0.01},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 2},
    })


def _records(save_dir, tag):
    out = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["tag"] == tag:
            out[record["step"]] = record
    return out


def test_wav2vec2_pretraining_logs_fairseq_stats_and_resumes_exactly(corpus, tmp_path):
    straight = tmp_path / "straight"
    main(_config(corpus, straight, 6))
    inner = _records(straight, "train_inner")
    assert sorted(inner) == list(range(1, 7))
    assert {"loss", "accuracy", "code_perplexity", "prob_perplexity", "temp", "gnorm", "clip", "lr", "wpb",
            "bsz"} <= set(inner[1])
    # set_num_updates reached the gumbel quantizer: temp = max(2·0.9^u, 0.5) in the forward of update u+1
    assert [inner[u]["temp"] for u in (1, 6)] == pytest.approx([2.0, 2 * 0.9**5], abs=1e-3)
    assert inner[1]["lr"] == pytest.approx(5e-4 / 2)  # polynomial warmup, set after the update
    assert "loss" in _records(straight, "valid")[6]

    resumed = tmp_path / "resumed"
    main(_config(corpus, resumed, 3))
    main(_config(corpus, resumed, 6))
    again = _records(resumed, "train_inner")
    assert [again[u]["loss"] for u in range(1, 7)] == [inner[u]["loss"] for u in range(1, 7)]
    a = torch.load(straight / "checkpoint_last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint_last.pt", weights_only=True)
    assert a["optimizer_history"][-1]["criterion_name"] == "Wav2vecCriterion"
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_common_compile_trains_as_the_eager_model(corpus, tmp_path):
    """common.compile=true: the same losses and checkpoint keys as eager training (torch.compile in place)."""
    no_dropout = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                      dropout_features=0.0)  # compiled graphs draw dropout masks from their own RNG stream
    for name, compile_model in (("eager", False), ("compiled", True)):
        cfg = _config(corpus, tmp_path / name, 2)
        for key, value in no_dropout.items():
            setattr(cfg.model, key, value)
        cfg.common.compile = compile_model
        main(cfg)
    eager, compiled = _records(tmp_path / "eager", "train_inner"), _records(tmp_path / "compiled", "train_inner")
    assert [compiled[u]["loss"] for u in (1, 2)] == pytest.approx([eager[u]["loss"] for u in (1, 2)], rel=1e-4)
    a = torch.load(tmp_path / "eager" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / "checkpoint_last.pt", weights_only=True)["model"]
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
