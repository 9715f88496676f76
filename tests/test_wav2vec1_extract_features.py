"""scripts/extract_features.py: wav2vec 2.0 layers to .npy / HDF5, batched, from a real checkpoint file."""

import importlib.util
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import fairseq_lite  # noqa: F401
from fairseq_lite.errors import CheckpointError, ConfigError
from fairseq_lite.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "extract_features.py")
MODEL = dict(_name="wav2vec2", quantize_targets=True, final_dim=16, encoder_layers=3, encoder_embed_dim=32,
             encoder_ffn_embed_dim=64, encoder_attention_heads=4, extractor_mode="layer_norm", conv_bias=True,
             conv_feature_layers="[(24, 10, 5)] + [(24, 3, 2)] * 2", conv_pos=16, conv_pos_groups=4,
             latent_vars=10, num_negatives=5, layer_norm_first=True)


def _load_script():
    spec = importlib.util.spec_from_file_location("extract_features", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_checkpoint(model_cfg, root, name):
    """A seeded wav2vec2 model of ``model_cfg`` saved in fairseq's layout as ``root/name``; returns (path, model)."""
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    cfg = {"task": {"_name": "audio_pretraining", "data": str(root), "normalize": True},
           "model": model_cfg, "criterion": {"_name": "wav2vec", "infonce": True}}
    checkpoint = root / name
    torch.save({"args": None, "cfg": cfg, "model": model.state_dict(), "optimizer_history": [
        {"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam", "lr_scheduler_state": {},
         "num_updates": 0}], "task_state": {}, "extra_state": {}}, checkpoint)
    return checkpoint, model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A wav2vec2 checkpoint in fairseq's layout, three audio files of different lengths and a manifest."""
    root = tmp_path_factory.mktemp("extract")
    checkpoint, model = _save_checkpoint(MODEL, root, "w2v2.pt")
    waves = root / "waves" / "spk"
    waves.mkdir(parents=True)
    rng = np.random.RandomState(0)
    lines = [str(root / "waves")]
    for i, n in enumerate((3000, 5200, 4100)):
        sf.write(waves / f"u{i}.wav", (0.2 * rng.randn(n)).astype(np.float32), 16000)
        lines.append(f"spk/u{i}.wav\t{n}")
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return root, checkpoint, model


def _reference(model, path, layer=None):
    """One file through the model alone, normalised as the task says: the per-file truth."""
    wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
    wav = torch.nn.functional.layer_norm(wav, wav.shape).unsqueeze(0)
    with torch.no_grad():
        out = model.extract_features(wav, None, layer=layer)
    return (out["x"] if layer is None else out["layer_results"][layer][0])[0].numpy()


def test_command_writes_npy_of_the_final_output(setup, tmp_path):
    root, checkpoint, model = setup
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, SCRIPT, "--checkpoint", str(checkpoint), "--output", str(tmp_path),
                             str(root / "train.tsv")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for i in range(3):
        features = np.load(tmp_path / "spk" / f"u{i}.npy")
        expected = _reference(model, root / "waves" / "spk" / f"u{i}.wav")
        assert features.shape == expected.shape and features.shape[1] == 32
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)  # batched + padded == alone


def test_all_layers_to_h5_and_chosen_layers(setup, tmp_path):
    root, checkpoint, model = setup
    script = _load_script()
    assert script.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "h5"), "--format", "h5",
                        "--layers", "all", "--max-tokens", "9000", str(root / "waves")]) == 0
    with h5py.File(tmp_path / "h5" / "features.h5", "r") as f:
        assert list(f.attrs["layers"]) == [0, 1, 2]
        stacked = f["spk/u1"][()]
        assert stacked.shape[0] == 3 and stacked.shape[2] == 32
        for layer in range(3):
            np.testing.assert_allclose(stacked[layer], _reference(model, root / "waves" / "spk" / "u1.wav", layer),
                                       rtol=1e-4, atol=1e-4)
    assert script.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "one"), "--layers", "-2",
                        "--max-tokens", "0", str(root / "waves" / "spk" / "u2.wav")]) == 0
    single = np.load(tmp_path / "one" / "u2.npy")
    np.testing.assert_allclose(single, _reference(model, root / "waves" / "spk" / "u2.wav", 1), rtol=1e-4, atol=1e-4)


def test_errors_are_one_line_and_actionable(setup, tmp_path):
    root, checkpoint, _ = setup
    script = _load_script()
    with pytest.raises(ConfigError, match="3 layers"):
        script.main([str(root / "waves"), "--checkpoint", str(checkpoint), "--output", str(tmp_path), "--layers", "5"])
    with pytest.raises(CheckpointError, match="does not exist"):
        script.main(["--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path), str(root / "waves")])


def test_ctc_checkpoint_gives_the_features_of_the_wav2vec2_model_inside(setup, tmp_path):
    """A wav2vec_ctc file (fairseq's layout: the pretrained model under w2v_encoder.w2v_model) is unwrapped."""
    from fairseq_lite.data.dictionary import Dictionary

    root, _, model = setup
    dictionary = Dictionary()
    for letter in "|ABC":
        dictionary.add_symbol(letter)
    pretraining_only = ("quantizer", "project_q", "final_proj")
    weights = {f"w2v_encoder.w2v_model.{k}": v for k, v in model.state_dict().items()
               if not k.startswith(pretraining_only)}
    weights.update({"w2v_encoder.proj.weight": torch.randn(len(dictionary), 32),
                    "w2v_encoder.proj.bias": torch.zeros(len(dictionary))})
    pretraining_cfg = {"task": {"_name": "audio_pretraining", "normalize": True}, "model": MODEL}
    cfg = {"task": {"_name": "audio_finetuning", "data": str(root), "labels": "ltr", "normalize": True},
           "model": {"_name": "wav2vec_ctc", "w2v_path": "unused.pt", "w2v_args": pretraining_cfg, "normalize": True},
           "criterion": {"_name": "ctc"}}
    checkpoint = tmp_path / "ctc.pt"
    torch.save({"args": None, "cfg": cfg, "model": weights, "optimizer_history": [
        {"criterion_name": "CtcCriterion", "optimizer_name": "FairseqAdam", "lr_scheduler_state": {},
         "num_updates": 0}], "task_state": {"target_dictionary": dictionary}, "extra_state": {}}, checkpoint)
    script = _load_script()
    assert script.main([str(root / "waves" / "spk" / "u0.wav"), "--checkpoint", str(checkpoint),
                        "--output", str(tmp_path / "out"), "--layers", "1"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "u0.npy"),
                               _reference(model, root / "waves" / "spk" / "u0.wav", 1), rtol=1e-4, atol=1e-4)


def test_a_group_norm_cnn_is_read_one_file_at_a_time_unless_max_tokens_is_given(setup, tmp_path):
    """Base's group-norm CNN normalises over a batch's padding: by default each file gets its own batch (its exact
    features); an explicit --max-tokens batches anyway, and then the shorter files' features differ."""
    root, _, _ = setup
    checkpoint, model = _save_checkpoint({**MODEL, "extractor_mode": "default", "conv_bias": False,
                                          "layer_norm_first": False}, tmp_path, "base_like.pt")
    script = _load_script()
    assert script.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "default"),
                        str(root / "train.tsv")]) == 0
    assert script.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "batched"),
                        "--max-tokens", "100000", str(root / "train.tsv")]) == 0
    for i in range(3):
        expected = _reference(model, root / "waves" / "spk" / f"u{i}.wav")
        np.testing.assert_allclose(np.load(tmp_path / "default" / "spk" / f"u{i}.npy"), expected, rtol=1e-4, atol=1e-4)
    batched_short = np.load(tmp_path / "batched" / "spk" / "u0.npy")
    assert np.abs(batched_short - _reference(model, root / "waves" / "spk" / "u0.wav")).max() > 1e-2
