"""Genuine fairseq 0.12.2 reads what fairseq_lite writes, and computes what fairseq_lite computes.

tests/fixtures/fairseq_lite_written/<name>/checkpoint.pt were written by fairseq_lite's own commands
(scripts/fairseq_fixtures/write_ours.py); fairseq_outputs.npz beside each is what genuine fairseq's
``load_model_ensemble_and_task`` and torchaudio's ``import_fairseq_model`` computed on inputs.npz
(scripts/fairseq_fixtures/read_ours.py, run in the genuine-fairseq venv). Here fairseq_lite computes the same
outputs from the same files; and checkpoints written now keep ``cfg`` to keys fairseq 0.12.2 accepts. fairseq read
them after their training folder was deleted: HuBERT's label dictionaries travel in ``task_state`` (a hubert_ctc
file also holds the pretraining ones and ``w2v_args``), so fairseq needs no label folder and no ``w2v_path``.
"""

import json
import os

import numpy as np
import pytest
import torch

import train_toy
from fairseq_lite import checkpoint_utils
from fairseq_lite.data.dictionary import Dictionary
from fairseq_lite.dataclass.utils import config_to_dict
from fairseq_lite.interop import fairseq_pickle
from fairseq_lite.interop.fairseq_checkpoint import load_checkpoint_to_cpu
from fairseq_lite.interop.fairseq_schema import EXTRA_STATE_KEY, split_for_fairseq
from fairseq_lite.training.train import main

WRITTEN = os.path.join(os.path.dirname(__file__), "fixtures", "fairseq_lite_written")
FIXTURES = sorted(name for name in os.listdir(WRITTEN) if os.path.isdir(os.path.join(WRITTEN, name)))
EXPECTED = {"w2v2_base_pretrain", "w2v2_large_pretrain", "w2v2_conformer_abs_pretrain", "w2v2_conformer_rope_pretrain",
            "w2v2_conformer_rel_pos_pretrain", "w2v2_ctc_base_10m",
            "wav2vec1_cnn", "vq_wav2vec_gumbel", "vq_wav2vec_kmeans", "transformer_lm", "hubert_base_pretrain",
            "hubert_ctc_base_10h", "hubert_ctc_from_hf"}


def _our_outputs(model, arch, inputs):
    """The outputs read_ours.py records, computed by fairseq_lite (same names, same layouts)."""
    with torch.no_grad():
        if arch == "transformer_lm":
            logits, _ = model(torch.from_numpy(inputs["tokens"]))
            return {"log_probs": model.get_normalized_probs((logits, None), log_probs=True)}
        source = torch.from_numpy(inputs["source"])
        if arch == "wav2vec2":
            return {"features": model.feature_extractor(source),
                    "x": model.extract_features(source, None, mask=False)["x"]}
        if arch == "hubert":
            return {"layer_1": model.extract_features(source, None, mask=False, output_layer=1)[0],
                    "x": model.extract_features(source, None, mask=False)[0]}
        if arch in ("wav2vec_ctc", "hubert_ctc"):
            return {"emissions": model.get_logits(model(source=source, padding_mask=None)).transpose(0, 1)}
        z = model.feature_extractor(source)
        out = {"z": z}
        if model.vector_quantizer is not None:
            z, out["codes"] = model.vector_quantizer.forward_idx(z)
            out["quantized"] = z
        out["c"] = model.feature_aggregator(z)
        return out


def test_every_kind_of_checkpoint_is_covered():
    assert EXPECTED <= set(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fairseq_computes_what_we_compute_on_our_files(name):
    folder = os.path.join(WRITTEN, name)
    read = json.load(open(os.path.join(folder, "fairseq_read.json")))
    assert read["fairseq_version"] == "0.12.2"
    theirs = dict(np.load(os.path.join(folder, "fairseq_outputs.npz")))
    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(folder, "checkpoint.pt")], arg_overrides={"data": folder})
    assert cfg.model._name == read["model"]
    ours = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in _our_outputs(models[0].eval(), read["model"], inputs).items()}
    assert set(ours) == {k for k in theirs if not k.startswith("torchaudio_")}
    for key, value in ours.items():
        np.testing.assert_allclose(value, theirs[key], atol=1e-4, rtol=1e-4, err_msg=f"{name}: {key}")
    for key in (k for k in theirs if k.startswith("torchaudio_")):  # torchaudio's conversion of our file
        np.testing.assert_allclose(ours[key[len("torchaudio_"):]], theirs[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", FIXTURES)
def test_stored_cfg_holds_only_what_fairseq_0_12_2_accepts(name):
    raw = torch.load(os.path.join(WRITTEN, name, "checkpoint.pt"), map_location="cpu", weights_only=False, pickle_module=fairseq_pickle)
    _, not_in_fairseq = split_for_fairseq(raw["cfg"])
    assert not_in_fairseq == {}
    assert raw["args"] is None


def test_checkpoints_written_now_are_fairseq_readable_and_round_trip(tmp_path):
    """Our own keys (here common.compile) go to extra_state, out of fairseq's way, and come back on load."""
    cfg = train_toy.toy_config(tmp_path, optimization={"max_update": 2})
    main(cfg)
    path = str(tmp_path / "checkpoint_last.pt")
    raw = torch.load(path, map_location="cpu", weights_only=False)
    kept, moved = split_for_fairseq(raw["cfg"])
    assert moved == {} and kept == raw["cfg"]
    assert "compile" not in raw["cfg"]["common"]
    assert "compile" in raw["extra_state"][EXTRA_STATE_KEY]["cfg"]["common"]
    assert load_checkpoint_to_cpu(path)["cfg"] == config_to_dict(cfg)


def test_our_task_keys_come_back_from_extra_state():
    path = os.path.join(WRITTEN, "w2v2_ctc_base_10m", "checkpoint.pt")
    raw = torch.load(path, map_location="cpu", weights_only=False, pickle_module=fairseq_pickle)
    assert "strict_sample_rate" not in raw["cfg"]["task"]
    assert "strict_sample_rate" not in raw["cfg"]["model"]["w2v_args"]["task"]
    loaded = load_checkpoint_to_cpu(path)["cfg"]
    assert loaded["task"]["strict_sample_rate"] is False
    assert "strict_sample_rate" in loaded["model"]["w2v_args"]["task"]


@pytest.mark.parametrize("name", ["hubert_base_pretrain", "hubert_ctc_base_10h"])
def test_fairseq_read_hubert_files_without_label_folders_or_the_pretrained_file(name):
    """What a fairseq 0.12.2 user needs beside our HuBERT files: nothing (fairseq_read.json lists the folders and
    files the stored cfg names that were gone when fairseq loaded them)."""
    read = json.load(open(os.path.join(WRITTEN, name, "fairseq_read.json")))
    raw = torch.load(os.path.join(WRITTEN, name, "checkpoint.pt"), map_location="cpu", weights_only=False,
                     pickle_module=fairseq_pickle)
    cfg, task_state = raw["cfg"], raw["task_state"]
    needed = [cfg["task"]["label_dir"]]
    if name == "hubert_ctc_base_10h":
        needed += [cfg["model"]["w2v_path"], cfg["model"]["w2v_args"]["task"]["label_dir"]]
        letters = Dictionary.load(os.path.join(WRITTEN, name, "dict.ltr.txt"))
        assert task_state["target_dictionary"].symbols == letters.symbols
    assert set(needed) <= set(read["absent_at_load"])
    assert [d.symbols[4:] for d in task_state["dictionaries"]] == [[str(i) for i in range(8)]]


def test_fairseq_reads_a_hubert_for_ctc_import_with_no_label_sets():
    """HF's HubertForCTC keeps no label embeddings: our import stores no label sets in ``w2v_args`` (genuine fairseq
    would look for the HF folder's dict.km.txt) and an empty ``label_embs_concat``, which fairseq reads strictly."""
    read = json.load(open(os.path.join(WRITTEN, "hubert_ctc_from_hf", "fairseq_read.json")))
    raw = torch.load(os.path.join(WRITTEN, "hubert_ctc_from_hf", "checkpoint.pt"), map_location="cpu",
                     weights_only=False, pickle_module=fairseq_pickle)
    assert read["fairseq_class"] == "HubertCtc" and raw["cfg"]["model"]["w2v_args"]["task"]["labels"] == []
    assert raw["model"]["w2v_encoder.w2v_model.label_embs_concat"].shape == (0, 32)
