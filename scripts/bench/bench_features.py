#!/usr/bin/env python3
"""Featurizing a folder, every layer to .npy: fairseq_lite's scripts/extract_features.py against HF's
``output_hidden_states`` on the same model (issue 21, "Show").

    python scripts/bench/bench_features.py [--checkpoint CKPT --audio DIR] [--repeats 3] [--json out.json]

By default it uses the HuBERT checkpoint that ``scripts/run_demo.py --model hubert`` pretrains
(demo_out/hubert/pretrain/checkpoint_last.pt, ``hubert``, 4 layers of 128, 1.1 M parameters, group-norm CNN)
and the demo's test split (demo/corpus/test, 42 FLAC files), the checkpoint exported to an HF folder with
``export_checkpoint_to_hf`` (scripts/convert_to_hf.py; a ``hubert`` becomes ``HubertModel``, a ``wav2vec2``
``Wav2Vec2Model``/``Wav2Vec2ForPreTraining``, loaded here with ``AutoModel``).

Timed alternately, in this process, each run loading its model and writing one L×T×C .npy per file:
- ``extract_features.py --layers all`` with its default (one file per batch for a group-norm CNN such as this
  model's, exact), and with length-sorted batching forced (``--max-tokens 1600000``, faster, but the group norm
  sees the padding);
- HF: ``AutoModel.from_pretrained``, each file read with soundfile and run alone (no padding, as HF advises for
  group-norm models) with ``output_hidden_states=True``, ``hidden_states[1:]`` (each layer's output) stacked
  and saved with ``np.save``.
Reported: audio seconds per second of each, their ratio, and the largest absolute difference between our saved
arrays and HF's (with the largest magnitude of HF's features for scale).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts"))
from common import RATE, alternate, markdown_table, print_report  # noqa: E402

DEMO_CHECKPOINT = "demo_out/hubert/pretrain/checkpoint_last.pt"
DEMO_AUDIO = "demo/corpus/test"
#: our runs: extract_features.py flags beyond the inputs, --checkpoint, --output and --layers all
OURS = {"extract_features.py": [], "extract_features.py --max-tokens 1600000": ["--max-tokens", "1600000"]}
HF_RUN = "HF output_hidden_states"


def audio_files(folder: str, ext: str) -> List[str]:
    """The ``ext`` files under ``folder`` (recursive, sorted), as extract_features.py finds them."""
    return sorted(glob.glob(os.path.join(folder, "**", f"*.{ext}"), recursive=True))


def run_ours(checkpoint: str, folder: str, ext: str, out: str, extra: List[str]) -> None:
    """extract_features.py's main, in this process: load, batch, extract every layer, write .npy files."""
    import extract_features

    argv = [folder, "--checkpoint", checkpoint, "--output", out, "--layers", "all", "--ext", ext, "--cpu"]
    if extract_features.main(argv + extra) != 0:
        raise SystemExit("bench_features: extract_features.py failed")


def run_hf(hf_dir: str, folder: str, files: List[str], out: str) -> None:
    """HF's model with ``output_hidden_states=True`` over ``files`` one at a time; each layer's output
    (``hidden_states[1:]``) saved as one L×T×C .npy per file, named as extract_features.py names it."""
    import soundfile
    from transformers import AutoModel

    model = AutoModel.from_pretrained(hf_dir).eval()
    with torch.inference_mode():
        for path in files:
            wav, _ = soundfile.read(path, dtype="float32")
            states = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states
            name = os.path.join(out, os.path.splitext(os.path.relpath(path, folder))[0] + ".npy")
            os.makedirs(os.path.dirname(name), exist_ok=True)
            np.save(name, torch.stack(states[1:])[:, 0].numpy())


def differences(ours: str, hf: str, folder: str, files: List[str]) -> Dict[str, float]:
    """Largest |ours − HF| over every saved array, and the largest |HF| for scale; shapes must agree."""
    worst, scale = 0.0, 0.0
    for path in files:
        name = os.path.splitext(os.path.relpath(path, folder))[0] + ".npy"
        a, b = np.load(os.path.join(ours, name)), np.load(os.path.join(hf, name))
        if a.shape != b.shape:
            raise SystemExit(f"bench_features: {name}: ours {a.shape} vs HF {b.shape}")
        worst, scale = max(worst, float(np.abs(a - b).max())), max(scale, float(np.abs(b).max()))
    return {"max_abs_diff": worst, "max_abs_hf": scale}


def run(args) -> Dict[str, object]:
    """Every measurement of the module docstring; returns the report."""
    import soundfile

    from fairseq_lite.interop.hf_files import export_checkpoint_to_hf

    torch.set_num_threads(args.threads)
    files = audio_files(args.audio, args.ext)
    if not files:
        raise SystemExit(f"bench_features: no *.{args.ext} files under {args.audio}")
    seconds = sum(soundfile.info(path).frames for path in files) / RATE
    with tempfile.TemporaryDirectory() as work:
        hf_dir = os.path.join(work, "hf")
        name = export_checkpoint_to_hf(args.checkpoint, hf_dir)
        outs = {run_name: os.path.join(work, f"out{i}") for i, run_name in enumerate([*OURS, HF_RUN])}
        runs = {run_name: (lambda extra=extra, out=outs[run_name]: run_ours(args.checkpoint, args.audio, args.ext,
                                                                            out, extra))
                for run_name, extra in OURS.items()}
        runs[HF_RUN] = lambda: run_hf(hf_dir, args.audio, files, outs[HF_RUN])
        times = alternate(runs, args.repeats, warmup=1)
        report: Dict[str, object] = {"model": f"{args.checkpoint} (exported as {name})", "files": len(files),
                                     "audio_seconds": seconds, "threads": args.threads, "repeats": args.repeats}
        for run_name, t in times.items():
            report[run_name] = {"wall_s": t["wall"], "cpu_s": t["cpu"], "audio_s_per_s": seconds / t["wall"],
                                "ratio_over_hf": times[HF_RUN]["wall"] / t["wall"],
                                "cpu_ratio_over_hf": times[HF_RUN]["cpu"] / t["cpu"]}
            if run_name != HF_RUN:
                report[run_name].update(differences(outs[run_name], outs[HF_RUN], args.audio, files))
    return report


def table(report: Dict[str, object]) -> str:
    """The markdown table of a run."""
    runs = [*OURS, HF_RUN]
    rows = [[r, f"{report[r]['wall_s']:.2f}", f"{report[r]['audio_s_per_s']:.1f}",
             f"{report[r]['ratio_over_hf']:.2f}x (CPU time {report[r]['cpu_ratio_over_hf']:.2f}x)",
             f"{report[r]['max_abs_diff']:.2e} (max abs {report[r]['max_abs_hf']:.1f})" if r != HF_RUN else "-"]
            for r in runs]
    caption = (f"All layers to .npy, {report['files']} files, {report['audio_seconds']:.0f} s of audio "
               f"({report['model']}), {report['threads']} threads, medians of {report['repeats']}")
    return caption + "\n" + markdown_table(["run", "wall s", "audio s / s", "vs HF", "max |ours - HF|"], rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT, help="wav2vec2 or hubert checkpoint")
    parser.add_argument("--audio", default=DEMO_AUDIO, help="folder of audio files (searched recursively)")
    parser.add_argument("--ext", default="flac")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"bench_features: {args.checkpoint} does not exist: run scripts/run_demo.py --model hubert "
                         "first (or pass --checkpoint)")
    return args


def main() -> None:
    args = parse_args()
    report = run(args)
    print_report(table(report), report, args.json)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"bench_features: {time.time() - started:.0f} s")
