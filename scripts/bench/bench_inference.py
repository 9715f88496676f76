#!/usr/bin/env python3
"""Transcribing a folder on this machine: fairseq_lite's infer.py against transformers' ASR pipeline, and
infer.py's ``--bf16`` against fp32 and against HF under bf16 autocast (issue 21, "Show").

    python scripts/bench/bench_inference.py [--checkpoint CKPT --data DIR] [--repeats 3] [--json out.json]

By default it uses the fine-tuned CTC checkpoint that ``scripts/run_demo.py`` leaves in
demo_out/hubert/finetune/checkpoint_best.pt (``hubert_ctc``, 1.1 M parameters) and the demo's test split
(demo/corpus/test; manifest, labels and dictionary in demo_out/hubert/data), exported to an HF folder with
``export_checkpoint_to_hf`` (scripts/convert_to_hf.py). The forward rows are repeated at BASE size on a
random-weight ``wav2vec_ctc`` and its HF copy (``ctc_pair``).

1. End to end, in this process, as a user transcribes a folder: ``infer.main([... --w2l-decoder viterbi ...])``
   (load, batch, decode, write the hypo files) vs ``pipeline("automatic-speech-recognition", model=hf_dir)`` over
   the same files (load, read each file with soundfile, transcribe, write); audio seconds per second of both,
   alternately timed, and whether the transcripts are identical.
2. The model forward over the split (one utterance at a time): ours fp32 and under infer.py's bf16 autocast
   (``EmissionModel(..., "bf16")``), HF's ``*ForCTC`` in fp32 and under ``torch.autocast("cpu", torch.bfloat16)``:
   real-time factor (forward seconds / audio seconds); and infer.py's test WER / letter ER with and without
   ``--bf16``, both with the demo's batching (every file in one padded batch) and one utterance at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from common import RATE, alternate, markdown_table, print_report  # noqa: E402

DEMO_CHECKPOINT = "demo_out/hubert/finetune/checkpoint_best.pt"
DEMO_DATA = "demo_out/hubert/data"


#: infer.py's batching: run_demo.py's (every test file in one padded batch) and one utterance at a time
BATCHING = {"max-tokens 4M": [], "batch-size 1": ["--batch-size", "1"]}


def infer_argv(data: str, checkpoint: str, results: str, extra: List[str]) -> List[str]:
    """run_demo.py's viterbi command (commands.md), followed by ``extra`` flags."""
    argv = [data, "--task", "audio_finetuning", "--nbest", "1", "--path", checkpoint, "--gen-subset", "test",
            "--results-path", results, "--w2l-decoder", "viterbi", "--criterion", "ctc", "--labels", "ltr",
            "--max-tokens", "4000000", "--post-process", "letter", "--cpu", "--quiet"]
    return argv + extra


def read_manifest(data: str) -> List[Tuple[str, int]]:
    """(audio path, samples) of each line of ``data``/test.tsv."""
    with open(os.path.join(data, "test.tsv"), encoding="utf-8") as f:
        root = f.readline().strip()
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [(os.path.join(root, path), int(n)) for path, n in rows]


def hypotheses(results: str, checkpoint: str, kind: str = "hypo.word") -> Dict[int, str]:
    """id → text of infer.py's ``<kind>-<checkpoint>-test.txt`` (lines ``TEXT (None-ID)``)."""
    path = os.path.join(results, f"{kind}-{os.path.basename(checkpoint)}-test.txt")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            text, _, tag = line.rstrip("\n").rpartition(" (")
            out[int(tag.rstrip(")").rsplit("-", 1)[1])] = text
    return out


def error_rates(results: str, checkpoint: str) -> Dict[str, float]:
    """Word and letter error rates (%) of infer.py's ref/hypo files (letters with '|' word boundaries)."""
    from fairseq_lite.decoding import edit_distance

    rates = {}
    for name, kind in (("wer", "word"), ("letter_er", "units")):
        refs, hyps = hypotheses(results, checkpoint, f"ref.{kind}"), hypotheses(results, checkpoint, f"hypo.{kind}")
        errors = sum(edit_distance(refs[k].split(), hyps.get(k, "").split()) for k in refs)
        rates[name] = 100.0 * errors / max(1, sum(len(v.split()) for v in refs.values()))
    return rates


def run_ours(data: str, checkpoint: str, results: str, extra: List[str]) -> None:
    """infer.py, in this process: load, batch, decode, write."""
    from fairseq_lite.cli import infer

    if infer.main(infer_argv(data, checkpoint, results, extra)) != 0:
        raise SystemExit("bench_inference: infer.py failed")


def run_hf(hf_dir: str, files: List[str], out_path: str) -> List[str]:
    """transformers' ASR pipeline over ``files`` (read with soundfile: no ffmpeg here), one text line each."""
    import soundfile
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=hf_dir, device="cpu")
    texts = []
    for path in files:
        wav, rate = soundfile.read(path, dtype="float32")
        texts.append(asr({"raw": wav, "sampling_rate": rate})["text"])
    with open(out_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    os.replace(out_path + ".tmp", out_path)
    return texts


def forward_rtf(ours_model: torch.nn.Module, hf_model: torch.nn.Module, wavs: List[torch.Tensor], repeats: int
                ) -> Dict[str, Dict[str, float]]:
    """Real-time factor (median forward seconds / audio seconds) over ``wavs``, one (1, n) waveform at a time:
    ours through infer.py's ``EmissionModel`` in fp32 and bf16, HF's model in fp32 and under bf16 autocast."""
    from fairseq_lite.cli.infer import EmissionModel

    cpu = torch.device("cpu")
    ours = {p: EmissionModel(ours_model, cpu, p) for p in ("fp32", "bf16")}
    hf_model.eval()
    seconds = sum(w.size(1) for w in wavs) / RATE

    def ours_run(precision):
        return lambda: [ours[precision](w, None) for w in wavs]

    def hf_run(dtype):
        @torch.inference_mode()
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                return [hf_model(w).logits for w in wavs]
        return run

    times = alternate({"ours fp32": ours_run("fp32"), "HF fp32": hf_run("fp32"), "ours bf16": ours_run("bf16"),
                       "HF bf16": hf_run("bf16")}, repeats)
    return {name: {"rtf": t["wall"] / seconds, "rtf_cpu": t["cpu"] / seconds} for name, t in times.items()}


def end_to_end(data: str, checkpoint: str, hf_dir: str, work: str, repeats: int) -> Dict[str, object]:
    """Part 1: infer.py viterbi vs the HF pipeline over the split, alternately timed; transcripts compared."""
    manifest = read_manifest(data)
    files = [path for path, _ in manifest]
    seconds = sum(n for _, n in manifest) / RATE
    hf_out = os.path.join(work, "hf.txt")
    runs = {f"infer.py {name}": (lambda extra=extra, name=name: run_ours(data, checkpoint, os.path.join(
        work, name), extra)) for name, extra in BATCHING.items()}
    runs["HF pipeline"] = lambda: run_hf(hf_dir, files, hf_out)
    times = alternate(runs, repeats, warmup=1)
    with open(hf_out, encoding="utf-8") as f:
        hf_text = f.read().splitlines()
    speed = {name: seconds / t["wall"] for name, t in times.items()}
    report = {"files": len(files), "audio_seconds": seconds, "wall_s": {name: t["wall"] for name, t in times.items()},
              "audio_s_per_s": speed, "example": {"HF pipeline": hf_text[0]}}
    for name in BATCHING:
        ours_text = hypotheses(os.path.join(work, name), checkpoint)
        differing = [i for i in range(len(files)) if ours_text.get(i, "").strip() != hf_text[i].strip()]
        run = f"infer.py {name}"
        report[run] = {"ratio_over_hf": speed[run] / speed["HF pipeline"], "transcripts_identical": not differing,
                       "differing": len(differing)}
        report["example"][run] = ours_text.get(0, "")
    return report


def precision_rows(data: str, checkpoint: str, hf_dir: str, work: str, repeats: int,
                   trained: bool) -> Dict[str, object]:
    """Part 2: forward RTF of ours fp32 / bf16 and HF bf16; infer.py's test WER and letter ER per precision."""
    import soundfile
    import transformers

    from fairseq_lite.checkpoint_utils import load_model_ensemble

    wavs = [torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None] for path, _ in read_manifest(data)]
    models, _ = load_model_ensemble([checkpoint])
    hf_model = transformers.AutoModelForCTC.from_pretrained(hf_dir)
    result: Dict[str, object] = {"rtf": forward_rtf(models[0], hf_model, wavs, repeats)}
    if trained:
        rates: Dict[str, Dict[str, float]] = {}
        for name, extra in BATCHING.items():
            for precision in ("fp32", "bf16"):
                results = os.path.join(work, f"wer_{name}_{precision}")
                run_ours(data, checkpoint, results, extra + (["--bf16"] if precision == "bf16" else []))
                rates[f"{name} {precision}"] = error_rates(results, checkpoint)
        result["error_rates"] = rates
    return result


def base_rtf(data: str, repeats: int, files: int) -> Dict[str, Dict[str, float]]:
    """Part 2 at BASE size: a random-weight wav2vec_ctc and its HF copy (``ctc_pair``) on the first test files."""
    import soundfile

    from common import ctc_pair

    ours, theirs = ctc_pair("base")
    wavs = [torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]
            for path, _ in read_manifest(data)[:files]]
    return forward_rtf(ours, theirs, wavs, repeats)


def tables(report: Dict[str, object]) -> str:
    """The markdown tables of a run."""
    e2e = report["end_to_end"]
    rows = [[name, f"{e2e['wall_s'][name]:.2f}", f"{e2e['audio_s_per_s'][name]:.1f}",
             f"{e2e[name]['ratio_over_hf']:.2f}x" if name in e2e else "1.00x",
             f"{e2e[name]['differing']} differ" if name in e2e else "-"] for name in e2e["wall_s"]]
    text = [f"End to end, {e2e['files']} files, {e2e['audio_seconds']:.0f} s of audio ({report['model']})",
            markdown_table(["run", "wall s (median)", "audio s / s", "vs pipeline", "transcripts vs pipeline"],
                           rows), ""]
    for label, rtf in (("demo model", report["precision"]["rtf"]), ("BASE, random weights", report.get("base_rtf"))):
        if rtf:
            rows = [[name, f"{t['rtf']:.4f}", f"{rtf['ours fp32']['rtf'] / t['rtf']:.2f}x"] for name, t in rtf.items()]
            text += [f"Forward real-time factor, {label}",
                     markdown_table(["forward", "RTF (wall)", "speed vs ours fp32"], rows), ""]
    rates = report["precision"].get("error_rates")
    if rates:
        rows = [[p, f"{r['wer']:.2f}", f"{r['letter_er']:.2f}"] for p, r in rates.items()]
        text += ["infer.py test error rates (viterbi)", markdown_table(["batching, precision", "WER %", "letter ER %"],
                                                                       rows)]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT, help="fine-tuned CTC checkpoint (the demo's)")
    parser.add_argument("--data", default=DEMO_DATA, help="folder with test.tsv, test.ltr, test.wrd, dict.ltr.txt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-files", type=int, default=8, help="test files for the BASE forward rows (0: none)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in (args.checkpoint, os.path.join(args.data, "test.tsv")):
        if not os.path.exists(path):
            raise SystemExit(f"bench_inference: {path} does not exist: run scripts/run_demo.py first "
                             "(or pass --checkpoint/--data)")
    from fairseq_lite.interop.hf_files import export_checkpoint_to_hf

    with tempfile.TemporaryDirectory() as work:
        hf_dir = os.path.join(work, "hf")
        name = export_checkpoint_to_hf(args.checkpoint, hf_dir, os.path.join(args.data, "dict.ltr.txt"))
        report: Dict[str, object] = {"model": f"{args.checkpoint} (trained, exported as {name})",
                                     "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
        report["end_to_end"] = end_to_end(args.data, args.checkpoint, hf_dir, work, args.repeats)
        report["precision"] = precision_rows(args.data, args.checkpoint, hf_dir, work, args.repeats, trained=True)
        if args.base_files:
            report["base_rtf"] = base_rtf(args.data, args.repeats, args.base_files)
    print_report(tables(report), report, args.json)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"bench_inference: {time.time() - started:.0f} s")
