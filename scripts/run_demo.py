#!/usr/bin/env python3
"""`make demo`: the whole wav2vec 2.0 recipe on the bundled speech corpus, with the real command-line tools.

    python scripts/run_demo.py [--out demo_out] [--pretrain-updates N] [--finetune-updates N]
                               [--finetune-overrides KEY=VALUE ...]

Steps, each announced with its command line:
  1. manifests and labels   examples/wav2vec/wav2vec_manifest.py + libri_labels.py for train, valid, test
  2. pretraining            fairseq-hydra-train --config-dir config/pretraining --config-name demo
  3. fine-tuning            fairseq-hydra-train --config-dir config/finetuning --config-name demo
  4. the same fine-tuning from random weights (model.no_pretrained_weights=true)
  5. LM and lexicon         scripts/build_kenlm.sh on demo/corpus/lm_text.txt, scripts/make_lexicon.py
  6. decoding               examples/speech_recognition/infer.py on test, viterbi and kenlm, for both models
  7. plots                  scripts/plot.py
and a WER table at the end (also written to OUT/results.md). Everything is written under OUT; a run starts
from scratch (previous training folders in OUT are removed so fairseq-hydra-train does not resume them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "valid", "test")
#: KenLM decoding settings: fairseq's README values (lm_weight 2, word_score -1, sil_weight 0), beam 50.
KENLM_FLAGS = ["--lm-weight", "2", "--word-score", "-1", "--sil-weight", "0", "--beam", "50"]
WER_LINE = re.compile(r"\bWER: ([0-9.]+)")


class Demo:
    """Runs the steps as subprocesses of this interpreter's environment and keeps their timings."""

    def __init__(self, out: str, corpus: str):
        self.out = os.path.abspath(out)
        self.corpus = os.path.abspath(corpus)
        self.data = os.path.join(self.out, "data")
        self.bin = os.path.dirname(sys.executable)
        self.timings: Dict[str, float] = {}
        self.start = time.time()
        self.step_number = 0

    def banner(self, title: str) -> None:
        self.step_number += 1
        elapsed = time.time() - self.start
        print(f"\n=== [{self.step_number}] {title}  (demo time so far {elapsed / 60:.1f} min) ===", flush=True)

    def run(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None, capture: bool = False) -> str:
        """Run one tool with its output shown as it comes; returns the output when ``capture``."""
        print("$ " + " ".join(argv), flush=True)
        full_env = dict(os.environ, PATH=self.bin + os.pathsep + os.environ.get("PATH", ""), PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        process = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        lines = []
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if capture:
                lines.append(line)
        if process.wait() != 0:
            raise SystemExit(f"demo: step failed (exit {process.returncode}): {' '.join(argv)}")
        return "".join(lines)

    def timed(self, name: str, argv: Sequence[str], **kwargs) -> str:
        began = time.time()
        output = self.run(argv, **kwargs)
        self.timings[name] = time.time() - began
        return output

    # -- the steps ------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.banner("manifests and letter labels (wav2vec_manifest.py, libri_labels.py)")
        began = time.time()
        os.makedirs(self.data, exist_ok=True)
        for split in SPLITS:
            manifest_dir = os.path.join(self.out, "manifest", split)
            self.run([sys.executable, "examples/wav2vec/wav2vec_manifest.py", os.path.join(self.corpus, split),
                      "--dest", manifest_dir, "--ext", "flac", "--valid-percent", "0"])
            tsv = os.path.join(self.data, f"{split}.tsv")
            shutil.copyfile(os.path.join(manifest_dir, "train.tsv"), tsv)
            self.run([sys.executable, "examples/wav2vec/libri_labels.py", tsv, "--output-dir", self.data,
                      "--output-name", split])
        shutil.copyfile(os.path.join(self.corpus, "dict.ltr.txt"), os.path.join(self.data, "dict.ltr.txt"))
        self.timings["data"] = time.time() - began

    def train(self, name: str, config_dir: str, overrides: List[str]) -> str:
        """fairseq-hydra-train with the demo config of ``config_dir``; returns the save_dir."""
        save_dir = os.path.join(self.out, name)
        shutil.rmtree(save_dir, ignore_errors=True)
        self.timed(name, [os.path.join(self.bin, "fairseq-hydra-train"), f"task.data={self.data}",
                          f"checkpoint.save_dir={save_dir}", *overrides,
                          "--config-dir", config_dir, "--config-name", "demo"])
        return save_dir

    def build_lm(self) -> Dict[str, str]:
        self.banner("4-gram word LM and lexicon (scripts/build_kenlm.sh, scripts/make_lexicon.py)")
        lm_dir = os.path.join(self.out, "lm")
        os.makedirs(lm_dir, exist_ok=True)
        text = os.path.join(self.corpus, "lm_text.txt")
        arpa, lexicon = os.path.join(lm_dir, "4gram.arpa"), os.path.join(lm_dir, "lexicon.lst")
        began = time.time()
        # lmplz when it is on PATH, else the pure-Python Kneser-Ney estimator; the demo never compiles KenLM
        self.run(["bash", "scripts/build_kenlm.sh", text, "4", arpa],
                 env={"PYTHON": sys.executable, "KENLM_NO_BUILD": "1"})
        self.run([sys.executable, "scripts/make_lexicon.py", "--words", text,
                  "--dict", os.path.join(self.data, "dict.ltr.txt"), "--output", lexicon])
        self.timings["lm"] = time.time() - began
        return {"arpa": arpa, "lexicon": lexicon}

    def decode(self, checkpoint: str, decoder: str, results: str, lm: Dict[str, str]) -> float:
        """infer.py on the test split (commands.md's command); returns the WER it reports."""
        argv = [sys.executable, "examples/speech_recognition/infer.py", self.data, "--task", "audio_finetuning",
                "--nbest", "1", "--path", checkpoint, "--gen-subset", "test", "--results-path", results,
                "--w2l-decoder", decoder, "--criterion", "ctc", "--labels", "ltr", "--max-tokens", "4000000",
                "--post-process", "letter", "--cpu", "--quiet"]
        if decoder == "kenlm":
            argv += ["--lexicon", lm["lexicon"], "--lm-model", lm["arpa"], *KENLM_FLAGS]
        output = self.timed(f"infer {os.path.basename(os.path.dirname(checkpoint))} {decoder}", argv, capture=True)
        found = WER_LINE.findall(output)
        if not found:
            raise SystemExit(f"demo: infer.py printed no 'WER:' line for {checkpoint} ({decoder})")
        return float(found[-1])


def letter_error_rate(results: str, checkpoint: str) -> float:
    """Letter error rate (%) from infer.py's ref.units/hypo.units files (word boundaries '|' included)."""
    from fairseq_lite.decoding import edit_distance

    def lines(prefix: str) -> Dict[str, List[str]]:
        path = os.path.join(results, f"{prefix}-{os.path.basename(checkpoint)}-test.txt")
        with open(path, encoding="utf-8") as f:
            return {line.rsplit(" (", 1)[1]: line.rsplit(" (", 1)[0].split() for line in f if line.strip()}

    refs, hyps = lines("ref.units"), lines("hypo.units")
    errors = sum(edit_distance(refs[k], hyps.get(k, [])) for k in refs)
    return 100.0 * errors / max(1, sum(len(v) for v in refs.values()))


def wer_table(rows: List[Dict[str, object]]) -> str:
    """The markdown table printed at the end of the demo."""
    lines = ["| model | fine-tuned from | decoder | test WER % | test letter ER % |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['init']} | {row['decoder']} | {row['wer']:.2f} | {row['ler']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--corpus", default=os.path.join(REPO, "demo", "corpus"), help="LibriSpeech-shaped corpus")
    parser.add_argument("--pretrain-updates", type=int, help="optimization.max_update of pretraining "
                        "(default: config/pretraining/demo.yaml)")
    parser.add_argument("--finetune-updates", type=int, help="optimization.max_update of both fine-tuning runs "
                        "(default: config/finetuning/demo.yaml)")
    parser.add_argument("--finetune-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more fairseq-hydra-train overrides for both fine-tuning runs, e.g. "
                             "model.feature_grad_mult=1.0")
    parser.add_argument("--no-plots", action="store_true", help="skip scripts/plot.py")
    return parser.parse_args(argv)


def main(argv: Sequence[str] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    demo = Demo(args.out, args.corpus)
    print(f"fairseq_lite demo: corpus {demo.corpus}, output {demo.out}", flush=True)
    demo.prepare_data()

    pre_overrides = [f"optimization.max_update={args.pretrain_updates}"] if args.pretrain_updates else []
    ft_overrides = [f"optimization.max_update={args.finetune_updates}"] if args.finetune_updates else []
    ft_overrides += args.finetune_overrides
    demo.banner("wav2vec 2.0 pretraining on the unlabelled train audio (fairseq-hydra-train)")
    pretrain = demo.train("pretrain", "config/pretraining", pre_overrides)
    pretrained = os.path.join(pretrain, "checkpoint_last.pt")
    demo.banner("CTC fine-tuning from the pretrained model (fairseq-hydra-train)")
    finetune = demo.train("finetune", "config/finetuning", [f"model.w2v_path={pretrained}", *ft_overrides])
    demo.banner("the same CTC fine-tuning from random weights (model.no_pretrained_weights=true)")
    scratch = demo.train("finetune_scratch", "config/finetuning",
                         [f"model.w2v_path={pretrained}", "model.no_pretrained_weights=true", *ft_overrides])
    lm = demo.build_lm()

    rows = []
    for run_dir, init in ((finetune, "pretrained (demo.yaml)"), (scratch, "random weights")):
        checkpoint = os.path.join(run_dir, "checkpoint_best.pt")
        for decoder in ("viterbi", "kenlm"):
            demo.banner(f"decoding test with {decoder}: {os.path.relpath(checkpoint, demo.out)} (infer.py)")
            results = os.path.join(demo.out, "results", f"{os.path.basename(run_dir)}-{decoder}")
            wer = demo.decode(checkpoint, decoder, results, lm)
            rows.append({"model": os.path.relpath(checkpoint, demo.out), "init": init,
                         "decoder": decoder + (" + 4-gram" if decoder == "kenlm" else ""),
                         "wer": wer, "ler": letter_error_rate(results, checkpoint)})

    if not args.no_plots:
        demo.banner("plots (scripts/plot.py)")
        demo.timed("plots", [sys.executable, "scripts/plot.py", "--out", os.path.join(demo.out, "plots"),
                             "--metrics", f"pretraining={pretrain}/metrics.jsonl",
                             f"fine-tuning={finetune}/metrics.jsonl",
                             f"fine-tuning from random weights={scratch}/metrics.jsonl",
                             "--pretrained", pretrained, "--finetuned", os.path.join(finetune, "checkpoint_best.pt"),
                             "--data", demo.data, "--subset", "test"])

    total = time.time() - demo.start
    table = wer_table(rows)
    timings = "\n".join(f"- {name}: {seconds:.0f} s" for name, seconds in demo.timings.items())
    report = f"{table}\n\nStep times (wall clock):\n{timings}\n- total: {total / 60:.1f} min\n"
    with open(os.path.join(demo.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(demo.data, "test.tsv"), encoding="utf-8") as f:
        utterances = sum(1 for _ in f) - 1
    print(f"\n=== results (test split: {utterances} utterances, voices unseen in training) ===\n{report}")
    print(f"written: {os.path.join(demo.out, 'results.md')}" + ("" if args.no_plots else
                                                                 f", plots in {os.path.join(demo.out, 'plots')}"))


if __name__ == "__main__":
    main()
