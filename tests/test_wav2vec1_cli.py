"""wav2vec 1.0 / vq-wav2vec as users run them: the legacy fairseq-train command, the featurize scripts,
and the Python API lines of commands.md, on real audio files written here."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_lite import checkpoint_utils
from fairseq_lite.cli.train import main as train_main
from fairseq_lite.errors import CheckpointError, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEAT = "[(32, 10, 5), (32, 8, 4), (32, 4, 2), (32, 4, 2), (32, 4, 2), (32, 1, 1), (32, 1, 1)]"
AGG = "[(32, 2, 1), (32, 3, 1), (32, 4, 1)]"

# commands.md's wav2vec 1.0 command, tiny: small layers, few updates, --cpu instead of --fp16
LEGACY = ["--num-workers", "0", "--cpu", "--max-update", "4", "--save-interval", "1", "--no-epoch-checkpoints",
          "--arch", "wav2vec", "--task", "audio_pretraining", "--min-lr", "1e-06", "--stop-min-lr", "1e-09",
          "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "cosine",
          "--conv-feature-layers", FEAT, "--conv-aggregator-layers", AGG,
          "--skip-connections-agg", "--residual-scale", "0.5", "--log-compression", "--warmup-updates", "2",
          "--warmup-init-lr", "1e-07", "--criterion", "wav2vec", "--num-negatives", "10",
          "--max-sample-size", "150000", "--max-tokens", "40000", "--skip-invalid-size-inputs-valid-test",
          "--seed", "3"]
# fairseq README's vq-wav2vec (gumbel) flags
VQ_GUMBEL = ["--activation", "gelu", "--offset", "auto", "--log-keys", '["prob_perplexity","code_perplexity","temp"]',
             "--vq-type", "gumbel", "--vq-groups", "2", "--vq-depth", "2", "--combine-groups", "--vq-vars", "16",
             "--vq-temp", "(2,0.5,0.999995)", "--prediction-steps", "4", "--cross-sample-negatives", "0"]


def _write_waves(folder, count, seed):
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    entries = []
    for i in range(count):
        n = 8000 + 1600 * i
        t = np.arange(n) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (180 + 40 * i) * t) + 0.05 * rng.randn(n)
        name = f"utt{i}.wav"
        sf.write(os.path.join(folder, name), wav.astype(np.float32), 16000)
        entries.append((name, n))
    return entries


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{root}/waves/{train,valid}/*.wav with manifests {root}/manifest/{train,valid}.tsv and a label file."""
    root = tmp_path_factory.mktemp("w2v1")
    manifest = root / "manifest"
    manifest.mkdir()
    for split, count, seed in (("train", 5, 0), ("valid", 2, 1)):
        folder = root / "waves" / split
        entries = _write_waves(str(folder), count, seed)
        lines = [str(folder)] + [f"{name}\t{n}" for name, n in entries]
        (manifest / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        (folder / f"{split}.ltr").write_text("".join(f"A B |\n" for _ in entries))
    return root


def _train(corpus, save_dir, extra):
    assert train_main([str(corpus / "manifest"), "--save-dir", str(save_dir)] + LEGACY + extra) == 0
    with open(save_dir / "metrics.jsonl") as f:
        valid = [r["loss"] for r in map(json.loads, f) if r["tag"] == "valid"]
    return valid


@pytest.fixture(scope="module")
def wav2vec_checkpoint(corpus):
    save_dir = corpus / "w2v"
    valid = _train(corpus, save_dir, [])
    return save_dir / "checkpoint_best.pt", valid


@pytest.fixture(scope="module")
def vq_checkpoint(corpus):
    save_dir = corpus / "vq"
    valid = _train(corpus, save_dir, VQ_GUMBEL)
    return save_dir / "checkpoint_last.pt", valid


def test_legacy_command_trains_wav2vec_and_flags_mean_what_users_mean(wav2vec_checkpoint):
    path, valid_losses = wav2vec_checkpoint
    assert valid_losses[-1] < valid_losses[0], valid_losses
    state = torch.load(path, map_location="cpu", weights_only=False)
    model_cfg = state["cfg"]["model"]
    # --skip-connections-agg / --log-compression turn the features on (fairseq turned them off: §12 #17)
    assert model_cfg["skip_connections_agg"] is True and model_cfg["log_compression"] is True
    assert model_cfg["_name"] == "wav2vec" and state["cfg"]["criterion"]["_name"] == "wav2vec"
    assert state["optimizer_history"][-1]["criterion_name"] == "Wav2vecCriterion"
    assert state["model"]["wav2vec_predictions.project_to_steps.weight"].shape == (32, 32, 1, 12)


def test_python_api_lines_of_commands_md(wav2vec_checkpoint, vq_checkpoint):
    model, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(wav2vec_checkpoint[0])])
    model = model[0]
    model.eval()
    wav_input_16khz = torch.randn(1, 10000)
    z = model.feature_extractor(wav_input_16khz)
    c = model.feature_aggregator(z)
    assert z.shape == (1, 32, 60) and c.shape == (1, 32, 60) and cfg.model.log_compression is True

    model, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(vq_checkpoint[0])])
    model = model[0].eval()
    z = model.feature_extractor(wav_input_16khz)
    _, idxs = model.vector_quantizer.forward_idx(z)
    assert idxs.shape == (1, 60, 2)
    # the gumbel temperature was restored from the update count
    assert model.vector_quantizer.curr_temp == pytest.approx(2 * 0.999995 ** 4)


def test_vq_wav2vec_command_trains_with_log_keys(vq_checkpoint):
    path, valid_losses = vq_checkpoint  # (loss going down is shown by test_wav2vec1_model's overfitting runs)
    assert len(valid_losses) >= 2 and all(math.isfinite(v) for v in valid_losses)
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 4
    assert state["cfg"]["model"]["vq_type"] == "gumbel" and state["cfg"]["model"]["combine_groups"] is True
    assert state["model"]["vector_quantizer.weight_proj.0.0.weight"].shape == (64, 32)
    with open(path.parent / "metrics.jsonl") as f:
        train = [r for r in map(json.loads, f) if r["tag"] == "train" and "loss" in r]
    assert {"prob_perplexity", "code_perplexity", "temp"} <= set(train[-1])


def _script_main(script):
    """The ``main(argv)`` of an examples/wav2vec script, to run it in-process (no interpreter start-up)."""
    path = os.path.join(REPO, "examples", "wav2vec", script)
    spec = importlib.util.spec_from_file_location(script.replace("-", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda *args: module.main([str(a) for a in args])


def _run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "examples", "wav2vec", script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_wav2vec_featurize_writes_h5context_files(corpus, wav2vec_checkpoint, tmp_path):
    out = tmp_path / "features"
    result = _run("wav2vec_featurize.py", "--input", corpus / "waves", "--output", out,
                  "--model", wav2vec_checkpoint[0], "--split", "train", "valid")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out / "train")) == sorted([f"utt{i}.h5context" for i in range(5)] + ["train.ltr"])
    assert (out / "valid" / "valid.ltr").read_text() == (corpus / "waves" / "valid" / "valid.ltr").read_text()

    model = checkpoint_utils.load_model_ensemble_and_task([str(wav2vec_checkpoint[0])])[0][0].eval()
    wav, _ = sf.read(corpus / "waves" / "train" / "utt3.wav", dtype="float32")
    with torch.no_grad():
        c = model.feature_aggregator(model.feature_extractor(torch.from_numpy(wav).unsqueeze(0)))[0].numpy()
    with h5py.File(out / "train" / "utt3.h5context", "r") as f:
        info, features = f["info"][()], f["features"][()]
    channels, frames = c.shape
    assert info.tolist() == [100.0, frames, channels]
    assert features.shape == (frames * channels,)
    np.testing.assert_allclose(features.reshape(frames, channels), c.T, rtol=1e-4, atol=1e-5)

    featurize = _script_main("wav2vec_featurize.py")
    assert featurize("-i", corpus / "waves", "-o", tmp_path / "z", "--model", wav2vec_checkpoint[0],
                     "--split", "valid", "--use-feat", "--no-copy-labels") == 0
    assert sorted(os.listdir(tmp_path / "z" / "valid")) == ["utt0.h5context", "utt1.h5context"]
    with h5py.File(tmp_path / "z" / "valid" / "utt0.h5context", "r") as f:
        frames, channels = int(f["info"][1]), int(f["info"][2])
        assert channels == 32 and f["features"].shape == (frames * channels,)
        assert np.all(f["features"][()] >= 0)  # CNN features after log compression


def test_vq_wav2vec_featurize_writes_code_lines(corpus, vq_checkpoint, wav2vec_checkpoint, tmp_path):
    out = tmp_path / "codes"
    result = _run("vq-wav2vec_featurize.py", "--data-dir", corpus / "manifest", "--output-dir", out,
                  "--checkpoint", vq_checkpoint[0], "--split", "train", "valid", "--extension", "tsv")
    assert result.returncode == 0, result.stderr
    lines = (out / "train.src").read_text().splitlines()
    assert len(lines) == 5 and len((out / "valid.src").read_text().splitlines()) == 2

    model = checkpoint_utils.load_model_ensemble_and_task([str(vq_checkpoint[0])])[0][0].eval()
    wav, _ = sf.read(corpus / "waves" / "train" / "utt2.wav", dtype="float32")
    with torch.no_grad():
        _, idx = model.vector_quantizer.forward_idx(model.feature_extractor(torch.from_numpy(wav).unsqueeze(0)))
    expected = " ".join(f"{a}-{b}" for a, b in idx[0].tolist())
    assert lines[2] == expected and len(lines[2].split()) == idx.shape[1]

    # glob mode, sharding, labels next to the audio, chunked long audio
    nested = tmp_path / "glob" / "train" / "speaker"
    _write_waves(str(nested), 4, seed=2)
    for i in range(4):
        (nested / f"utt{i}.lbl").write_text(f"label {i}\n")
    featurize = _script_main("vq-wav2vec_featurize.py")
    assert featurize("--data-dir", tmp_path / "glob", "--output-dir", out, "--checkpoint", vq_checkpoint[0],
                     "--splits", "train", "--extension", "wav", "--labels", "lbl", "--shard", "1",
                     "--num-shards", "2", "--max-size", "6000") == 0
    assert (out / "train.lbl.1").read_text() == "label 1\nlabel 3\n"
    assert len((out / "train.src.1").read_text().splitlines()) == 2

    common = ["--data-dir", corpus / "manifest", "--output-dir", out, "--splits", "train", "--extension", "tsv"]
    with pytest.raises(ConfigError, match="--shard and --num-shards"):
        featurize(*common, "--checkpoint", vq_checkpoint[0], "--shard", "1")
    with pytest.raises(CheckpointError, match="no vector quantizer"):
        featurize(*common, "--checkpoint", wav2vec_checkpoint[0])
