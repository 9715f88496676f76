#!/usr/bin/env python3
"""Peak resident memory of the BASE pretraining update and of BASE CTC inference: fairseq_lite against genuine
fairseq 0.12.2 and HF transformers, each in a fresh process (issue 21, "Show").

    python scripts/bench/bench_memory.py [--fairseq-python PY] [--batch 2 --seconds 5 --ctc-seconds 15] [--json F]

Every (side, workload) runs in its own subprocess that imports only its own library (fairseq_lite, fairseq in
its venv, or transformers), builds the model at BASE size (fairseq's wav2vec2_base_librispeech layout, dropout
and layerdrop off, random weights), and runs two steps on one random batch (``torch.manual_seed(1)``):
- ``pretrain``: ``--batch`` × ``--seconds`` s, quantized targets, a mask from compute_mask_indices (mask_prob
  0.65, length 10), 100 negatives, the wav2vec criterion (InfoNCE, loss weights 0.1 and 10, HF's diversity weight
  0.1), backward, an Adam step (ours: ``fairseq_lite.optim.adam.Adam``; fairseq: ``fairseq.optim.adam.Adam``;
  HF: fused ``torch.optim.AdamW``, HF Trainer's default);
- ``inference``: a ``wav2vec_ctc`` (ours and fairseq's ``Wav2VecCtc``, HF ``Wav2Vec2ForCTC``, 32 letters) on
  1 × ``--ctc-seconds`` s under ``torch.inference_mode``, logits computed.
The child reports /proc/self/status VmRSS after building (imports, weights), VmHWM over the two steps (the
high-water mark restarted after building: what a run needs at its peak, building transients left out) and
``ru_maxrss`` (the whole process). Rows are ours ÷ peer ratios of the step peak (> 1: ours needs less).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Callable, Dict

HERE = os.path.abspath(__file__)
FAIRSEQ_PYTHON = os.path.expanduser("~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python")
SIDES = ("fairseq_lite", "fairseq", "transformers")
WORKLOADS = ("pretrain", "inference")
#: wav2vec2_base_librispeech with every dropout off, the settings the three sides share
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                  dropout_features=0.0, encoder_layerdrop=0.0)
BASE = dict(final_dim=256, quantize_targets=True, **NO_DROPOUT)
ADAM = dict(lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
LOSS_WEIGHTS = [0.1, 10.0]
MASK = dict(mask_prob=0.65, mask_length=10, min_masks=2)
RATE = 16000


def _mask(torch, batch: int, frames: int):
    """The (batch, frames) time mask every side trains with (fairseq's compute_mask_indices, drawn by ours)."""
    import numpy as np

    from fairseq_lite.modules.masking import compute_mask_indices

    return torch.from_numpy(compute_mask_indices((batch, frames), None, rng=np.random.default_rng(0), **MASK))


def _mask_fairseq(torch, batch: int, frames: int):
    """The same kind of mask drawn by genuine fairseq's own compute_mask_indices (seeded numpy)."""
    import numpy as np
    from fairseq.data.data_utils import compute_mask_indices

    np.random.seed(0)
    return torch.from_numpy(compute_mask_indices((batch, frames), None, **MASK))


def ours_pretrain(torch, source):
    """fairseq_lite's Wav2Vec2Model + wav2vec criterion + Adam: one update."""
    from fairseq_lite.criterions.wav2vec_criterion import Wav2vecCriterion
    from fairseq_lite.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from fairseq_lite.optim.adam import Adam

    model = Wav2Vec2Model(Wav2Vec2Config(**BASE)).train()
    frames = int(model.feature_extractor.output_lengths(torch.tensor(source.size(1))))
    sample = {"id": torch.arange(source.size(0)),
              "net_input": {"source": source, "mask_indices": _mask(torch, source.size(0), frames)}}
    criterion, optimizer = Wav2vecCriterion(infonce=True, loss_weights=LOSS_WEIGHTS), Adam(model.parameters(), **ADAM)

    def step():
        optimizer.zero_grad(set_to_none=True)
        criterion(model, sample)[0].backward()
        optimizer.step()
    return step


def fairseq_pretrain(torch, source):
    """Genuine fairseq 0.12.2's Wav2Vec2Model + Wav2vecCriterion + its Adam: one update."""
    from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from fairseq.optim.adam import Adam

    model = Wav2Vec2Model(Wav2Vec2Config(**BASE)).train()
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(source.size(1))))
    sample = {"id": torch.arange(source.size(0)),
              "net_input": {"source": source, "mask_indices": _mask_fairseq(torch, source.size(0), frames)}}
    criterion = Wav2vecCriterion(None, infonce=True, loss_weights=LOSS_WEIGHTS)
    optimizer = Adam(model.parameters(), **ADAM)

    def step():
        optimizer.zero_grad(set_to_none=True)
        criterion(model, sample)[0].backward()
        optimizer.step()
    return step


def _hf_config(**extra):
    """HF's Wav2Vec2Config for BASE (its defaults are fairseq's BASE) with SDPA attention and no dropout."""
    import transformers

    config = transformers.Wav2Vec2Config(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                         feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, final_dropout=0.0,
                                         layerdrop=0.0, proj_codevector_dim=256, **extra)
    config._attn_implementation = "sdpa"
    return config


def hf_pretrain(torch, source):
    """HF Wav2Vec2ForPreTraining + fused AdamW: one update (loss with HF's own negatives for the same mask)."""
    import transformers.models.wav2vec2.modeling_wav2vec2 as hf_w2v

    model = hf_w2v.Wav2Vec2ForPreTraining(_hf_config(diversity_loss_weight=LOSS_WEIGHTS[0])).train()
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(source.size(1))))
    mask = _mask(torch, source.size(0), frames)
    negatives = torch.from_numpy(hf_w2v._sample_negative_indices((source.size(0), frames), 100,
                                                                 mask_time_indices=mask.numpy()))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True, **ADAM)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(source, mask_time_indices=mask, sampled_negative_indices=negatives).loss.backward()
        optimizer.step()
    return step


def ours_inference(torch, source):
    """fairseq_lite's Wav2VecCtc: logits of one batch."""
    from fairseq_lite.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc, Wav2VecEncoder

    model_args = {"_name": "wav2vec2", "final_dim": 256, **NO_DROPOUT}
    cfg = Wav2Vec2CtcConfig(w2v_args={"model": model_args, "task": {"_name": "audio_pretraining"}})
    model = Wav2VecCtc(cfg, Wav2VecEncoder.from_config(cfg, 32)).eval()
    return _logits(torch, lambda: model.get_logits(model(source=source, padding_mask=None)))


def fairseq_inference(torch, source):
    """Genuine fairseq 0.12.2's Wav2VecCtc (w2v_args in the config, no pretrained weights): logits."""
    from omegaconf import OmegaConf
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc, Wav2VecEncoder

    cfg = OmegaConf.structured(Wav2Vec2CtcConfig(no_pretrained_weights=True, normalize=False, data="."))
    cfg.w2v_args = OmegaConf.create({"task": {"_name": "audio_pretraining", "data": ".", "normalize": False},
                                     "model": {"_name": "wav2vec2", "final_dim": 256, "encoder_embed_dim": 768,
                                               **NO_DROPOUT}})
    model = Wav2VecCtc(cfg, Wav2VecEncoder(cfg, 32)).eval()
    return _logits(torch, lambda: model.get_logits(model(source=source, padding_mask=None)))


def hf_inference(torch, source):
    """HF Wav2Vec2ForCTC: logits."""
    import transformers

    model = transformers.Wav2Vec2ForCTC(_hf_config(vocab_size=32)).eval()
    return _logits(torch, lambda: model(source).logits)


def _logits(torch, forward: Callable):
    def step():
        with torch.inference_mode():
            forward()
    return step


BUILDERS: Dict[str, Dict[str, Callable]] = {
    "fairseq_lite": {"pretrain": ours_pretrain, "inference": ours_inference},
    "fairseq": {"pretrain": fairseq_pretrain, "inference": fairseq_inference},
    "transformers": {"pretrain": hf_pretrain, "inference": hf_inference},
}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(side: str, workload: str, batch: int, seconds: float, threads: int) -> Dict[str, float]:
    """In a fresh process: build ``side``'s ``workload``, run two steps; the memory figures in MiB."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    source = torch.randn(batch, int(seconds * RATE))
    step = BUILDERS[side][workload](torch, source)
    built = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # restart the high-water mark: the steps' own peak
        f.write("5")
    for _ in range(2):
        step()
    return {"after_build": built, "step_peak": _status_mib("VmHWM"),
            "process_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(python: str, side: str, workload: str, batch: int, seconds: float, threads: int) -> Dict[str, float]:
    """``child`` in a fresh ``python`` process (the fairseq side in its own venv)."""
    argv = [python, HERE, "--child", side, workload, "--batch", str(batch), "--seconds", str(seconds),
            "--threads", str(threads)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Every side × workload, in the order fairseq_lite, fairseq, transformers per workload."""
    pythons = {"fairseq_lite": sys.executable, "transformers": sys.executable, "fairseq": args.fairseq_python}
    shapes = {"pretrain": (args.batch, args.seconds), "inference": (1, args.ctc_seconds)}
    report: Dict[str, Dict[str, Dict[str, float]]] = {}
    for workload in WORKLOADS:
        report[workload] = {side: measure(pythons[side], side, workload, *shapes[workload], args.threads)
                            for side in SIDES}
    return report


def rows(report, args) -> list:
    """README rows: the step peak of ours / fairseq / HF, with ratios (peer ÷ ours, > 1: ours needs less)."""
    what = {"pretrain": f"peak RSS, pretraining update, BASE, {args.batch} × {args.seconds:g} s",
            "inference": f"peak RSS, CTC inference, BASE, 1 × {args.ctc_seconds:g} s"}
    out = []
    for workload, sides in report.items():
        ours = sides["fairseq_lite"]
        for peer, label in (("fairseq", "genuine fairseq 0.12.2"), ("transformers", "HF")):
            theirs = sides[peer]
            out.append([f"{what[workload]} (MiB, fresh process)", f"{ours['step_peak']:,.0f}",
                        f"{theirs['step_peak']:,.0f} ({label})", f"**{theirs['step_peak'] / ours['step_peak']:.2f}×**",
                        "", f"after build {ours['after_build']:,.0f} / {theirs['after_build']:,.0f} MiB"])
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--fairseq-python", default=FAIRSEQ_PYTHON, help="python of the genuine fairseq venv")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ctc-seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.batch, args.seconds, args.threads)))
        return 0
    if not os.path.exists(args.fairseq_python):
        raise SystemExit(f"bench_memory: no genuine fairseq python at {args.fairseq_python}: build it with "
                         "../shared/tools/setup_fairseq_venv.sh or pass --fairseq-python")
    sys.path.insert(0, os.path.dirname(HERE))
    from common import markdown_table, print_report

    report = run(args)
    print_report(markdown_table(["measurement", "fairseq_lite", "peer", "ratio (peer ÷ ours)", "goal", "notes"],
                                rows(report, args)), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
