"""Training on torch-xla's CPU device (common.tpu=true): a toy model and a tiny wav2vec 2.0 on real audio.

torch-xla needs its own torch release, so these run only in the environment ``make test-xla`` builds
(torch==2.9.0 + torch-xla==2.9.0, PJRT_DEVICE=CPU) and are skipped elsewhere.
"""

import json
import os

import pytest

pytest.importorskip("torch_xla")
os.environ.setdefault("PJRT_DEVICE", "CPU")

import train_toy  # noqa: E402
from fairseq_lite.training.distributed import call_main  # noqa: E402
from fairseq_lite.training.train import main  # noqa: E402


def _losses(save_dir):
    out = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["tag"] == "train_inner":
            out[record["step"]] = record["loss"]
    return out


def test_toy_model_trains_on_the_xla_device_with_falling_loss(tmp_path):
    cfg = train_toy.toy_config(tmp_path, common={"tpu": True, "cpu": False}, task={"max_len": 2},
                               optimization={"max_update": 24, "lr": [0.02]})
    call_main(cfg, main)
    losses = _losses(tmp_path)
    assert sorted(losses) == list(range(1, 25))
    assert sum(losses[u] for u in range(21, 25)) < sum(losses[u] for u in range(1, 5))
    assert (tmp_path / "checkpoint_last.pt").exists()


def test_wav2vec2_pretraining_on_the_xla_device(tmp_path):
    import numpy as np
    import soundfile as sf
    import torch

    from fairseq_lite.dataclass.initialize import finalize_config

    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    for i in range(8):
        sf.write(tmp_path / f"u{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
                                          + rng.normal(0, 0.05, 4000)).astype(np.float32), 16000)
    for split, ids in (("train", range(6)), ("valid", range(6, 8))):
        (tmp_path / f"{split}.tsv").write_text(f"{tmp_path}\n" + "".join(f"u{i}.wav\t4000\n" for i in ids))
    save_dir = tmp_path / "ckpt"
    cfg = finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "tpu": True},
        "task": {"_name": "audio_pretraining", "data": str(tmp_path), "max_sample_size": 4000,
                 "enable_padding": True, "num_batch_buckets": 1},
        "dataset": {"batch_size": 2, "num_workers": 0, "required_batch_size_multiple": 1,
                    "disable_validation": True},
        "optimization": {"max_update": 12, "lr": [2e-3], "clip_norm": 10.0},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": {"_name": "wav2vec2", "quantize_targets": True, "final_dim": 16, "encoder_layers": 2,
                  "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
                  "conv_feature_layers": "[(24, 10, 5)] + [(24, 3, 2)] * 2", "conv_pos": 16, "conv_pos_groups": 4,
                  "latent_vars": 10, "num_negatives": 5, "encoder_layerdrop": 0.0},
        "criterion": {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 10]},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 2},
    })
    call_main(cfg, main)
    losses = _losses(save_dir)
    assert sorted(losses) == list(range(1, 13)) and all(np.isfinite(list(losses.values())))
    assert np.mean([losses[u] for u in (10, 11, 12)]) < np.mean([losses[u] for u in (1, 2, 3)])  # it learns
    state = torch.load(save_dir / "checkpoint_last.pt", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == 12
    assert all(v.device.type == "cpu" for v in state["model"].values())


def test_ctc_finetuning_on_the_xla_device_lowers_the_loss(tmp_path):
    """A tiny wav2vec_ctc (encoder built from stored w2v_args, as a fine-tuned checkpoint is) on real audio."""
    import numpy as np
    import soundfile as sf

    from fairseq_lite.dataclass.initialize import finalize_config

    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    words = ["AB", "BA", "AAB", "BBA"]
    for i, word in enumerate(words):
        tone = np.concatenate([np.sin(2 * np.pi * (300 if c == "A" else 700) * t[: 4000 // len(word)])
                               for c in word])
        sf.write(tmp_path / f"u{i}.wav", (0.3 * tone + rng.normal(0, 0.02, tone.size)).astype(np.float32), 16000)
    (tmp_path / "dict.ltr.txt").write_text("A 10\nB 10\n| 10\n")
    for split in ("train", "valid"):
        (tmp_path / f"{split}.tsv").write_text(
            f"{tmp_path}\n" + "".join(f"u{i}.wav\t{sf.info(tmp_path / f'u{i}.wav').frames}\n" for i in range(4)))
        (tmp_path / f"{split}.ltr").write_text("".join(" ".join(w) + " |\n" for w in words))
    pretraining = {
        "task": {"_name": "audio_pretraining", "data": str(tmp_path), "normalize": False},
        "model": {"_name": "wav2vec2", "encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
                  "encoder_attention_heads": 4, "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 2",
                  "conv_pos": 16, "conv_pos_groups": 4, "final_dim": 16},
    }
    save_dir = tmp_path / "ckpt"
    cfg = finalize_config({
        "common": {"seed": 1, "log_interval": 1, "log_format": "simple", "tpu": True},
        "task": {"_name": "audio_finetuning", "data": str(tmp_path), "labels": "ltr", "enable_padding": True,
                 "num_batch_buckets": 1},
        "dataset": {"batch_size": 4, "num_workers": 0, "required_batch_size_multiple": 1,
                    "disable_validation": True},
        "optimization": {"max_update": 16, "lr": [2e-3], "sentence_avg": True},
        "checkpoint": {"save_dir": str(save_dir)},
        "model": {"_name": "wav2vec_ctc", "w2v_path": "unused: w2v_args given", "w2v_args": pretraining,
                  "apply_mask": False, "mask_channel_prob": 0.0, "layerdrop": 0.0, "feature_grad_mult": 1.0},
        "criterion": {"_name": "ctc", "zero_infinity": True},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-8},
        "lr_scheduler": {"_name": "fixed"},
    })
    call_main(cfg, main)
    losses = _losses(save_dir)
    assert sorted(losses) == list(range(1, 17))
    assert sum(losses[u] for u in range(13, 17)) < 0.8 * sum(losses[u] for u in range(1, 5))
