"""Genuine fairseq 0.12.2 outputs of HuBERT's label tools (examples/hubert/simple_kmeans): MFCC and layer
features, k-means models and labels, on real speech.

Run with the genuine-fairseq venv only (never imported by fairseq_lite), after scikit-learn, joblib and
npy-append-array are installed there (``make fairseq-fixtures`` does both)::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/hubert_units_fixtures.py

The audio: ``tests/fixtures/6313-76958-0021.flac`` (fairseq's own HuBERT test file, LibriSpeech, CC BY 4.0) and
three demo corpus utterances, listed in one manifest (root: the repository) cut into 2 shards. fairseq's scripts
run unchanged, as subprocesses, from its installed ``examples/hubert/simple_kmeans/``, with two stand-ins that
touch no computation: torchaudio ≥ 2.9 has no ``sox_effects`` module, which fairseq's audio reader imports even
when it has nothing to convert (16 kHz mono here), so an empty one is provided; and ``.cuda()`` (hard-coded by
dump_w2v2_feature.py and dump_hubert_feature.py) returns the CPU tensor or module. Written to
``tests/fixtures/fairseq/hubert_units/``:

- ``mfcc/train_{rank}_2.{npy,len}``: dump_mfcc_feature.py's shards;
- ``w2v2_layer1/layer_0_1.{npy,len}`` and ``hubert_layer1/layer_0_1.{npy,len}``: dump_w2v2_feature.py on the
  ``w2v2_large_pretrain`` fixture checkpoint (its task normalises the waveform) and dump_hubert_feature.py on
  ``hubert_base_pretrain``'s, layer 1, ``--max_chunk`` 16000 (the 2.5 s file runs in three pieces), for the
  manifest ``layer.tsv`` of one demo utterance (HuBERT's task gets a ``dict.km.txt`` of the checkpoint's size,
  its label_dir being a folder of the run that trained it);
- ``fairseq_km_centers.npy`` and ``labels/train_{rank}_2.km``: learn_kmeans.py (K = 8, seed 0) on the MFCC
  shards and dump_km_label.py with that model;
- ``our_km_centers.npy`` and ``labels_of_our_km/train_{rank}_2.km``: fairseq_lite's learn_kmeans.py (run with the
  project's python, ``FAIRSEQ_LITE_PYTHON``) with the same arguments, and fairseq's dump_km_label.py reading that
  model file;
- ``meta.json``: versions (scikit-learn's too), the audio files, the commands.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FIXTURES, REPO, fairseq_dir, generator_main, run_fairseq, versions  # noqa: E402

AUDIO = ["tests/fixtures/6313-76958-0021.flac", "demo/corpus/valid/201/20101/201-20101-0000.flac",
         "demo/corpus/valid/201/20101/201-20101-0001.flac", "demo/corpus/valid/201/20101/201-20101-0002.flac"]
NSHARD = 2
KMEANS_ARGS = ["8", "--seed", "0", "--n_init", "3", "--max_iter", "20"]
#: layer features: fixture checkpoint → (fairseq's script, output folder)
LAYER_MODELS = {"w2v2_large_pretrain": ("dump_w2v2_feature.py", "w2v2_layer1"),
                "hubert_base_pretrain": ("dump_hubert_feature.py", "hubert_layer1")}
LAYER_AUDIO = AUDIO[1:2]  # 2.5 s: three pieces of MAX_CHUNK samples
LAYER, MAX_CHUNK = 1, 16000
OURS = os.path.join(REPO, "examples", "hubert", "simple_kmeans")

#: Runs one of fairseq's simple_kmeans scripts as ``__main__`` with the two stand-ins described above.
BOOTSTRAP = """
import os, runpy, sys, types, torch
def apply_effects_tensor(*args, **kwargs):
    raise NotImplementedError("torchaudio has no sox_effects; these fixtures need no resampling")
stub = types.ModuleType("torchaudio.sox_effects"); stub.apply_effects_tensor = apply_effects_tensor
sys.modules["torchaudio.sox_effects"] = stub
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
if os.environ.get("FAIRSEQ_ARG_OVERRIDES"):
    import json, fairseq.checkpoint_utils as cu
    load, overrides = cu.load_model_ensemble_and_task, json.loads(os.environ["FAIRSEQ_ARG_OVERRIDES"])
    cu.load_model_ensemble_and_task = lambda paths, **k: load(paths, arg_overrides=overrides, **k)
script = sys.argv[1]; sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


RUNS = itertools.count()


def run_simple_kmeans(script: str, args: Sequence[str], work: str, arg_overrides: Optional[dict] = None) -> None:
    """fairseq's ``simple_kmeans/<script>`` with ``args``, logged into ``work/logs``; ``arg_overrides`` are passed
    to the checkpoint loader."""
    path = os.path.join(fairseq_dir(), "examples", "hubert", "simple_kmeans", script)
    if arg_overrides:
        os.environ["FAIRSEQ_ARG_OVERRIDES"] = json.dumps(arg_overrides)
    try:
        run_fairseq(["-c", BOOTSTRAP, path, *args], os.path.join(work, "logs", f"{next(RUNS)}.{script}.log"), cwd=work)
    finally:
        os.environ.pop("FAIRSEQ_ARG_OVERRIDES", None)


def dump_layer_features(fixture: str, script: str, work: str) -> None:
    """fairseq's ``script`` on the ``layer`` manifest with a fixture checkpoint, into ``work/<fixture>``. A HuBERT
    task reads ``dict.km.txt`` from its label_dir (a folder of the run that wrote it): one is written here."""
    import torch

    checkpoint = os.path.join(FIXTURES, fixture, "checkpoint.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    overrides = None
    if "label_embs_concat" in state["model"]:
        with open(os.path.join(work, "dict.km.txt"), "w") as f:
            f.write("".join(f"{i} 1\n" for i in range(len(state["model"]["label_embs_concat"]) - 4)))
        overrides = {"label_dir": work, "data": work}
    run_simple_kmeans(script, [work, "layer", checkpoint, str(LAYER), "1", "0", os.path.join(work, fixture),
                               "--max_chunk", str(MAX_CHUNK)], work, overrides)


def write_tsv(folder: str, split: str, files: Sequence[str]) -> List[int]:
    """``folder/{split}.tsv`` listing ``files`` relative to the repository; returns their sample counts."""
    import soundfile as sf

    frames = [sf.info(os.path.join(REPO, path)).frames for path in files]
    with open(os.path.join(folder, f"{split}.tsv"), "w") as f:
        f.write(REPO + "\n" + "".join(f"{path}\t{n}\n" for path, n in zip(files, frames)))
    return frames


def copy_shards(src: str, dest: str, split: str, nshard: int, exts: Sequence[str]) -> None:
    """Copy the ``{split}_{rank}_{nshard}.{ext}`` files of every rank from ``src`` to ``dest``."""
    os.makedirs(dest, exist_ok=True)
    for rank in range(nshard):
        for ext in exts:
            name = f"{split}_{rank}_{nshard}.{ext}"
            shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))


def kmeans_centers(km_path: str) -> np.ndarray:
    """The cluster centers of a joblib k-means model file (kept as .npy: the fixtures hold no pickle)."""
    import joblib

    return np.asarray(joblib.load(km_path).cluster_centers_)


def generate(output_dir: str) -> None:
    import sklearn

    out = os.path.join(output_dir, "hubert_units")
    project_python = os.environ.get("FAIRSEQ_LITE_PYTHON", os.path.join(REPO, ".venv", "bin", "python"))
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "logs"))
        frames = write_tsv(work, "train", AUDIO)
        write_tsv(work, "layer", LAYER_AUDIO)
        for rank in range(NSHARD):
            run_simple_kmeans("dump_mfcc_feature.py", [work, "train", str(NSHARD), str(rank), f"{work}/mfcc"], work)
        for fixture, (script, _) in LAYER_MODELS.items():
            dump_layer_features(fixture, script, work)
        run_simple_kmeans("learn_kmeans.py", [f"{work}/mfcc", "train", str(NSHARD), f"{work}/fairseq_km.bin",
                                              *KMEANS_ARGS], work)
        subprocess.run([project_python, os.path.join(OURS, "learn_kmeans.py"), f"{work}/mfcc", "train", str(NSHARD),
                        f"{work}/our_km.bin", *KMEANS_ARGS], check=True, stdout=subprocess.DEVNULL)
        for km, labels in (("fairseq_km.bin", "labels"), ("our_km.bin", "labels_of_our_km")):
            for rank in range(NSHARD):
                run_simple_kmeans("dump_km_label.py", [f"{work}/mfcc", "train", f"{work}/{km}", str(NSHARD),
                                                       str(rank), f"{work}/{labels}"], work)
        shutil.rmtree(out, ignore_errors=True)
        copy_shards(f"{work}/mfcc", f"{out}/mfcc", "train", NSHARD, ["npy", "len"])
        for fixture, (_, folder) in LAYER_MODELS.items():
            copy_shards(f"{work}/{fixture}", f"{out}/{folder}", "layer", 1, ["npy", "len"])
        copy_shards(f"{work}/labels", f"{out}/labels", "train", NSHARD, ["km"])
        copy_shards(f"{work}/labels_of_our_km", f"{out}/labels_of_our_km", "train", NSHARD, ["km"])
        np.save(f"{out}/fairseq_km_centers.npy", kmeans_centers(f"{work}/fairseq_km.bin"))
        np.save(f"{out}/our_km_centers.npy", kmeans_centers(f"{work}/our_km.bin"))
    meta = {**versions(), "scikit-learn": sklearn.__version__, "audio": AUDIO, "num_samples": frames,
            "nshard": NSHARD, "kmeans_args": KMEANS_ARGS, "layer_audio": LAYER_AUDIO,
            "layer_checkpoints": {folder: f"{fixture}/checkpoint.pt" for fixture, (_, folder) in LAYER_MODELS.items()},
            "layer": LAYER, "max_chunk": MAX_CHUNK,
            "commands": ["dump_mfcc_feature.py <tsv_dir> train 2 <rank> mfcc",
                         *(f"{script} <tsv_dir> layer <{folder} checkpoint> {LAYER} 1 0 {folder} "
                           f"--max_chunk {MAX_CHUNK}" for script, folder in LAYER_MODELS.values()),
                         "learn_kmeans.py mfcc train 2 <km> " + " ".join(KMEANS_ARGS),
                         "dump_km_label.py mfcc train <km> 2 <rank> labels"]}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    generator_main(__doc__.splitlines()[0], generate)
