"""Step 2 of the other direction: genuine fairseq 0.12.2 reads the checkpoints fairseq_lite wrote.

Run with the genuine-fairseq venv only (never imported by fairseq_lite)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/read_ours.py

For every ``tests/fixtures/fairseq_lite_written/<name>/checkpoint.pt`` (written by ``write_ours.py``) it runs
fairseq's own ``checkpoint_utils.load_model_ensemble_and_task``, computes the model's outputs on
``inputs.npz`` in eval mode, converts wav2vec 2.0, HuBERT and CTC models with torchaudio's
``import_fairseq_model`` and runs those too, and writes ``fairseq_outputs.npz`` and ``fairseq_read.json`` beside
the file (which notes the label folder and pretrained file the stored cfg names but fairseq read it without).
``tests/test_fairseq_reads_ours.py`` compares them with fairseq_lite's outputs on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Optional

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DIR = os.path.join(REPO, "tests", "fixtures", "fairseq_lite_written")


def _torchaudio(model, source: torch.Tensor, notes: dict) -> Optional[torch.Tensor]:
    """The last layer (pretraining) or emissions (CTC) of torchaudio's ``import_fairseq_model(model)``; None, with
    the reason in ``notes``, where torchaudio cannot convert it (conformers, no post_extract_proj)."""
    from torchaudio.models.wav2vec2.utils import import_fairseq_model

    try:
        converted = import_fairseq_model(model).eval()
    except Exception as exc:  # torchaudio's own limits, recorded rather than hidden
        notes["torchaudio"] = f"import_fairseq_model failed: {type(exc).__name__}: {exc}"
        return None
    notes["torchaudio"] = f"converted to {type(converted).__name__}"
    if hasattr(model, "w2v_model"):  # the CTC encoder
        return converted(source)[0]
    return converted.extract_features(source)[0][-1]


def _wav2vec2_outputs(model, source: torch.Tensor, notes: dict) -> dict:
    features = model.feature_extractor(source)
    result = model.extract_features(source, None, mask=False)
    out = {"features": features, "x": result["x"]}
    converted = _torchaudio(model, source, notes)
    if converted is not None:
        out["torchaudio_x"] = converted
    return out


def _hubert_outputs(model, source: torch.Tensor, notes: dict) -> dict:
    layer_1, _ = model.extract_features(source, None, mask=False, output_layer=1)
    out = {"layer_1": layer_1, "x": model.extract_features(source, None, mask=False)[0]}
    converted = _torchaudio(model, source, notes)
    if converted is not None:
        out["torchaudio_x"] = converted
    return out


def _ctc_outputs(model, source: torch.Tensor, notes: dict) -> dict:
    net_output = model(source=source, padding_mask=None)
    out = {"emissions": model.get_logits(net_output).transpose(0, 1)}  # B x T x V
    converted = _torchaudio(model.w2v_encoder, source, notes)
    if converted is not None:
        out["torchaudio_emissions"] = converted
    return out


def _wav2vec1_outputs(model, source: torch.Tensor, notes: dict) -> dict:
    z = model.feature_extractor(source)
    out = {"z": z}
    if model.vector_quantizer is not None:
        quantized = model.vector_quantizer.forward_idx(z)
        z, out["codes"] = quantized
        out["quantized"] = z
    out["c"] = model.feature_aggregator(z)
    return out


def _lm_outputs(model, tokens: torch.Tensor, notes: dict) -> dict:
    logits, _ = model(tokens)
    return {"log_probs": model.get_normalized_probs((logits, None), log_probs=True)}


def _absent_paths(cfg) -> list:
    """``task.label_dir``, ``model.w2v_path`` and the pretraining ``label_dir`` (in ``model.w2v_args``) of the stored
    cfg where they do not exist: fairseq read the file without them."""
    w2v_args = cfg.model.get("w2v_args", None)
    paths = [cfg.task.get("label_dir", None), cfg.model.get("w2v_path", None),
             w2v_args.task.get("label_dir", None) if w2v_args else None]
    return sorted(path for path in paths if path and not os.path.exists(path))


def read_one(folder: str) -> dict:
    """Load ``folder/checkpoint.pt`` with fairseq and write its outputs; returns what was read."""
    from fairseq import checkpoint_utils

    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    overrides = {"data": folder}  # dict.ltr.txt / dict.txt live beside the checkpoint
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(folder, "checkpoint.pt")], arg_overrides=overrides)
    model = models[0].eval()
    arch = cfg.model._name
    runners = {"wav2vec2": _wav2vec2_outputs, "wav2vec_ctc": _ctc_outputs, "wav2vec": _wav2vec1_outputs,
               "hubert": _hubert_outputs, "hubert_ctc": _ctc_outputs}
    notes: dict = {"absent_at_load": _absent_paths(cfg)}
    with torch.no_grad():
        if arch in runners:
            outputs = runners[arch](model, torch.from_numpy(inputs["source"]), notes)
        else:
            outputs = _lm_outputs(model, torch.from_numpy(inputs["tokens"]), notes)
    arrays = {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in outputs.items()}
    np.savez(os.path.join(folder, "fairseq_outputs.npz"), **arrays)
    import fairseq

    read = {"fairseq_version": fairseq.__version__, "torch_version": torch.__version__, "model": arch,
            "fairseq_class": type(model).__name__, "task": cfg.task._name, "outputs": sorted(arrays), **notes}
    with open(os.path.join(folder, "fairseq_read.json"), "w") as f:
        json.dump(read, f, indent=1, sort_keys=True)
        f.write("\n")
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=DEFAULT_DIR)
    parser.add_argument("--only", nargs="*", default=[], metavar="NAME", help="read only these fixtures")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sys.modules["fairseq_lite"] = None  # fairseq alone reads these files
    for name in sorted(args.only or os.listdir(args.dir)):
        folder = os.path.join(args.dir, name)
        if os.path.isfile(os.path.join(folder, "checkpoint.pt")):
            print(name, read_one(folder))


if __name__ == "__main__":
    main()
