#!/usr/bin/env python3
"""`make demo`: the whole wav2vec 2.0 (or HuBERT) recipe on the bundled speech corpus, with the real command-line tools.

    python scripts/run_demo.py [--model wav2vec2|hubert] [--out demo_out] [--pretrain-updates N]
                               [--finetune-updates N] [--pretrain-overrides KEY=VALUE ...]
                               [--finetune-overrides KEY=VALUE ...] [--pool-utts N] [--unseen-utts N]

Steps, each announced with its command line:
  0. unlabelled pool        scripts/make_speech_corpus.py --extra: about 70 minutes of unlabelled speech (7x the
                            10 labelled minutes, more voices and sentences) and an unseen-voices test split
  1. manifests and labels   examples/wav2vec/wav2vec_manifest.py + libri_labels.py for train, valid, test, unseen,
                            and the pool's manifest
  2. pretraining            fairseq-hydra-train --config-dir config/pretraining --config-name demo, on the pool
  3. fine-tuning            fairseq-hydra-train --config-dir config/finetuning --config-name demo, and beside
                            it the same fine-tuning from random weights (model.no_pretrained_weights=true): the
                            two run side by side on half the cores each, logs in OUT/finetune.log and
                            OUT/finetune_scratch.log
  4. LM and lexicon         scripts/build_kenlm.sh on demo/corpus/lm_text.txt, scripts/make_lexicon.py
  5. decoding               examples/speech_recognition/infer.py on test and unseen, viterbi and kenlm, both models
  6. plots                  scripts/plot.py
and a WER table at the end (also written to OUT/results.md). Everything is written under OUT; a run starts
from scratch (previous training folders in OUT are removed so fairseq-hydra-train does not resume them).

Without espeak-ng (or with ``--pool-utts 0``) the pool and the unseen split are skipped: pretraining reads the
labelled train audio, as before issue 23, and only test is decoded.

``--model hubert`` runs the same workflow and budget with HuBERT (output in demo_out/hubert by default): before
pretraining, the first iteration's targets with examples/hubert/simple_kmeans (dump_mfcc_feature.py,
learn_kmeans.py with 50 clusters, dump_km_label.py, write_km_dict.py); the pretraining and both fine-tuning runs
use the hubert_demo configs (task hubert_pretraining, models hubert and hubert_ctc); the plots are the training
curves only (plot.py's embedding pictures read wav2vec 2.0 models).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "valid", "test")
#: the splits make_speech_corpus.py --extra synthesises at demo time: the unlabelled pool and the unseen voices
POOL, UNSEEN = "pool", "unseen"
#: KenLM decoding settings: fairseq's README values (lm_weight 2, word_score -1, sil_weight 0), beam 50.
KENLM_FLAGS = ["--lm-weight", "2", "--word-score", "-1", "--sil-weight", "0", "--beam", "50"]
WER_LINE = re.compile(r"\bWER: ([0-9.]+)")
#: per --model: the yaml name under config/pretraining and config/finetuning, and the pretraining banner
MODELS = {"wav2vec2": ("demo", "wav2vec 2.0 pretraining on the unlabelled audio"),
          "hubert": ("hubert_demo", "HuBERT pretraining on the unlabelled audio, k-means MFCC targets")}
#: k-means clusters of the HuBERT demo's MFCC targets (fairseq: 100 on LibriSpeech's 960 h; the demo has 10 min)
N_CLUSTERS = 50
KMEANS_TOOLS = os.path.join("examples", "hubert", "simple_kmeans")


class Demo:
    """Runs the steps as subprocesses of this interpreter's environment and keeps their timings."""

    def __init__(self, out: str, corpus: str):
        self.out = os.path.abspath(out)
        self.corpus = os.path.abspath(corpus)
        self.data = os.path.join(self.out, "data")
        #: the pretraining manifest folder: the pool's once make_pool has run, else the labelled train audio's
        self.pretrain_data = self.data
        self.subsets = ["test"]
        self.bin = os.path.dirname(sys.executable)
        self.timings: Dict[str, float] = {}
        self.start = time.time()
        self.step_number = 0

    def banner(self, title: str) -> None:
        self.step_number += 1
        elapsed = time.time() - self.start
        print(f"\n=== [{self.step_number}] {title}  (demo time so far {elapsed / 60:.1f} min) ===", flush=True)

    def tool_env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The environment of the tools: this interpreter's bin folder first on PATH, unbuffered output, ``extra``."""
        return dict(os.environ, PATH=self.bin + os.pathsep + os.environ.get("PATH", ""), PYTHONUNBUFFERED="1",
                    **(extra or {}))

    def run(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None, capture: bool = False) -> str:
        """Run one tool with its output shown as it comes; returns the output when ``capture``."""
        print("$ " + " ".join(argv), flush=True)
        process = subprocess.Popen(argv, cwd=REPO, env=self.tool_env(env), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
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

    def make_pool(self, pool_utts: int, unseen_utts: int) -> Optional[str]:
        """The unlabelled pool and the unseen-voices split (make_speech_corpus.py --extra); returns their folder,
        or None when there is no espeak-ng or no pool is asked for."""
        if pool_utts <= 0 or shutil.which("espeak-ng") is None:
            print("note: no unlabelled pool (--pool-utts 0 or no espeak-ng): pretraining reads the train audio")
            return None
        self.banner("unlabelled pool and unseen-voices split (scripts/make_speech_corpus.py --extra)")
        extra = os.path.join(self.out, "extra_corpus")
        self.timed("pool", [sys.executable, "scripts/make_speech_corpus.py", extra, "--extra", "--overwrite",
                            "--pool-utts", str(pool_utts), "--unseen-utts", str(unseen_utts)])
        self.pretrain_data = os.path.join(self.out, "pool_data")
        self.subsets = ["test", UNSEEN] if unseen_utts > 0 else ["test"]
        return extra

    def manifest(self, root: str, split: str, data: str, labels: bool) -> None:
        """wav2vec_manifest.py of one split folder into data/<split>.tsv, and libri_labels.py's letters."""
        manifest_dir = os.path.join(self.out, "manifest", split)
        self.run([sys.executable, "examples/wav2vec/wav2vec_manifest.py", os.path.join(root, split),
                  "--dest", manifest_dir, "--ext", "flac", "--valid-percent", "0"])
        os.makedirs(data, exist_ok=True)
        tsv = os.path.join(data, f"{split}.tsv")
        shutil.copyfile(os.path.join(manifest_dir, "train.tsv"), tsv)
        if labels:
            self.run([sys.executable, "examples/wav2vec/libri_labels.py", tsv, "--output-dir", data,
                      "--output-name", split])

    def prepare_data(self, extra: Optional[str]) -> None:
        self.banner("manifests and letter labels (wav2vec_manifest.py, libri_labels.py)")
        began = time.time()
        for split in SPLITS:
            self.manifest(self.corpus, split, self.data, labels=True)
        if extra is not None:
            if UNSEEN in self.subsets:
                self.manifest(extra, UNSEEN, self.data, labels=True)
            self.manifest(extra, POOL, self.pretrain_data, labels=False)
            # audio_pretraining reads <data>/train.tsv
            os.replace(os.path.join(self.pretrain_data, f"{POOL}.tsv"), os.path.join(self.pretrain_data, "train.tsv"))
        shutil.copyfile(os.path.join(self.corpus, "dict.ltr.txt"), os.path.join(self.data, "dict.ltr.txt"))
        self.timings["data"] = time.time() - began

    def km_labels(self, n_clusters: int) -> str:
        """HuBERT's first-iteration targets of the train split (label_commands); returns the label folder."""
        self.banner(f"HuBERT targets: MFCC features, {n_clusters}-means, frame labels (examples/hubert/simple_kmeans)")
        began = time.time()
        feat_dir, lab_dir = os.path.join(self.out, "mfcc"), os.path.join(self.out, "km_labels")
        for folder in (feat_dir, lab_dir):
            shutil.rmtree(folder, ignore_errors=True)
        for argv in label_commands(sys.executable, self.pretrain_data, feat_dir, os.path.join(feat_dir, "km.bin"), lab_dir,
                                   n_clusters):
            self.run(argv)
        self.timings["labels"] = time.time() - began
        return lab_dir

    def train_command(self, name: str, config_dir: str, overrides: List[str], config_name: str = "demo",
                      data: Optional[str] = None) -> Tuple[str, List[str]]:
        """fairseq-hydra-train with the demo config ``config_name`` of ``config_dir`` on ``data`` (default the
        labelled manifests), saving into OUT/``name`` (emptied first): (save_dir, command line)."""
        save_dir = os.path.join(self.out, name)
        shutil.rmtree(save_dir, ignore_errors=True)
        return save_dir, [os.path.join(self.bin, "fairseq-hydra-train"), f"task.data={data or self.data}",
                          f"checkpoint.save_dir={save_dir}", *overrides,
                          "--config-dir", config_dir, "--config-name", config_name]

    def train(self, name: str, config_dir: str, overrides: List[str], config_name: str, data: str) -> str:
        """One training (as train_command), its output shown as it comes; returns the save_dir."""
        save_dir, argv = self.train_command(name, config_dir, overrides, config_name, data)
        self.timed(name, argv)
        return save_dir

    def run_side_by_side(self, jobs: Sequence[Tuple[str, List[str]]]) -> None:
        """Run the (name, command line) jobs at once, each with its share of the CPU cores (OMP_NUM_THREADS) and
        its output in OUT/<name>.log, and time them together. Small models use a core better alone than two
        cores together: the demo's two fine-tunings take about 25 % less wall time side by side than in turn."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // len(jobs))
        env = self.tool_env({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        began, running = time.time(), []
        for name, argv in jobs:
            log_path = os.path.join(self.out, f"{name}.log")
            print("$ " + " ".join(argv) + f" > {log_path}", flush=True)
            with open(log_path, "w", encoding="utf-8") as log:
                running.append((name, argv, log_path, subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                                                       stderr=subprocess.STDOUT)))
        print(f"({len(jobs)} runs side by side, {threads} thread(s) each; follow them with tail -f OUT/<name>.log)",
              flush=True)
        failed = [(argv, log_path) for _, argv, log_path, process in running if process.wait() != 0]
        for name, _, log_path, _ in running:
            with open(log_path, encoding="utf-8") as log:
                tail = log.readlines()[-4:]
            print(f"--- {name} (last lines of {log_path}) ---\n" + "".join(tail), end="", flush=True)
        if failed:
            argv, log_path = failed[0]
            raise SystemExit(f"demo: step failed (see {log_path}): {' '.join(argv)}")
        self.timings[" + ".join(name for name, _ in jobs) + " (side by side)"] = time.time() - began

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

    def decode(self, checkpoint: str, decoder: str, results: str, lm: Dict[str, str], subset: str) -> float:
        """infer.py on one split (commands.md's command); returns the WER it reports."""
        argv = [sys.executable, "examples/speech_recognition/infer.py", self.data, "--task", "audio_finetuning",
                "--nbest", "1", "--path", checkpoint, "--gen-subset", subset, "--results-path", results,
                "--w2l-decoder", decoder, "--criterion", "ctc", "--labels", "ltr", "--max-tokens", "4000000",
                "--post-process", "letter", "--cpu", "--quiet"]
        if decoder == "kenlm":
            argv += ["--lexicon", lm["lexicon"], "--lm-model", lm["arpa"], *KENLM_FLAGS]
        output = self.timed(f"infer {os.path.basename(os.path.dirname(checkpoint))} {decoder} {subset}", argv,
                            capture=True)
        found = WER_LINE.findall(output)
        if not found:
            raise SystemExit(f"demo: infer.py printed no 'WER:' line for {checkpoint} ({decoder})")
        return float(found[-1])


def letter_error_rate(results: str, checkpoint: str, subset: str = "test") -> float:
    """Letter error rate (%) from infer.py's ref.units/hypo.units files (word boundaries '|' included)."""
    from fairseq_lite.decoding import edit_distance

    def lines(prefix: str) -> Dict[str, List[str]]:
        path = os.path.join(results, f"{prefix}-{os.path.basename(checkpoint)}-{subset}.txt")
        with open(path, encoding="utf-8") as f:
            return {line.rsplit(" (", 1)[1]: line.rsplit(" (", 1)[0].split() for line in f if line.strip()}

    refs, hyps = lines("ref.units"), lines("hypo.units")
    errors = sum(edit_distance(refs[k], hyps.get(k, [])) for k in refs)
    return 100.0 * errors / max(1, sum(len(v) for v in refs.values()))


def wer_table(rows: List[Dict[str, object]], subsets: Sequence[str] = ("test",)) -> str:
    """The markdown table printed at the end of the demo: a row per model and decoder, WER and letter ER of each
    subset (a row holds ``subset: (wer, ler)``)."""
    head = "".join(f" {subset} WER % | {subset} letter ER % |" for subset in subsets)
    lines = [f"| model | fine-tuned from | decoder |{head}", "|---|---|---|" + "---|---|" * len(subsets)]
    for row in rows:
        scores = "".join(" {:.2f} | {:.2f} |".format(*row[subset]) for subset in subsets)
        lines.append(f"| {row['model']} | {row['init']} | {row['decoder']} |{scores}")
    return "\n".join(lines)


def label_commands(python: str, data: str, feat_dir: str, km_path: str, lab_dir: str,
                   n_clusters: int) -> List[List[str]]:
    """The examples/hubert/simple_kmeans command lines (one shard) that turn ``data``/train.tsv into HuBERT's
    first-iteration targets: MFCCs into ``feat_dir``, k-means on all of them into ``km_path``, the frame labels
    and their merge into ``lab_dir``/train.km, and ``lab_dir``/dict.km.txt."""
    def tool(name: str, *arguments: str) -> List[str]:
        return [python, os.path.join(KMEANS_TOOLS, name), *arguments]

    return [tool("dump_mfcc_feature.py", data, "train", "1", "0", feat_dir),
            tool("learn_kmeans.py", feat_dir, "train", "1", km_path, str(n_clusters), "--percent", "-1"),
            tool("dump_km_label.py", feat_dir, "train", km_path, "1", "0", lab_dir),
            tool("write_km_dict.py", lab_dir, km_path, "--split", "train", "--nshard", "1")]


def label_overrides(model: str, data: str, km_labels: Optional[str]) -> Tuple[List[str], List[str]]:
    """The label folders of (pretraining, fine-tuning): HuBERT's task reads ``km_labels``/train.km when it
    pretrains and the letter labels beside the manifests in ``data`` when it fine-tunes; wav2vec 2.0 needs none."""
    if model == "wav2vec2":
        return [], []
    return [f"task.label_dir={km_labels}"], [f"task.label_dir={data}"]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="wav2vec2",
                        help="the model pretrained and fine-tuned (default wav2vec2; hubert: the hubert_demo configs)")
    parser.add_argument("--out", help="output folder (default demo_out, demo_out/hubert with --model hubert)")
    parser.add_argument("--corpus", default=os.path.join(REPO, "demo", "corpus"), help="LibriSpeech-shaped corpus")
    parser.add_argument("--pretrain-updates", type=int, help="optimization.max_update of pretraining "
                        "(default: config/pretraining/demo.yaml or hubert_demo.yaml)")
    parser.add_argument("--finetune-updates", type=int, help="optimization.max_update of both fine-tuning runs "
                        "(default: config/finetuning/demo.yaml or hubert_demo.yaml)")
    parser.add_argument("--pretrain-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more fairseq-hydra-train overrides for pretraining, e.g. optimization.lr=[0.002]")
    parser.add_argument("--finetune-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more fairseq-hydra-train overrides for both fine-tuning runs, e.g. "
                             "model.feature_grad_mult=1.0")
    parser.add_argument("--pool-utts", type=int, default=40, help="utterances per pool speaker (36 speakers; "
                        "default 40: about 70 minutes); 0: pretrain on the labelled train audio")
    parser.add_argument("--unseen-utts", type=int, default=14, help="utterances per unseen-voices speaker (4)")
    parser.add_argument("--no-plots", action="store_true", help="skip scripts/plot.py")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(REPO, "demo_out", *(["hubert"] if args.model == "hubert" else []))
    return args


def train_all(demo: Demo, args: argparse.Namespace) -> Tuple[str, str, str]:
    """Pretraining (after HuBERT's k-means labels), then fine-tuning from it and from random weights; returns
    the three save_dirs."""
    config_name, title = MODELS[args.model]
    km_labels = demo.km_labels(N_CLUSTERS) if args.model == "hubert" else None
    pre_labels, ft_labels = label_overrides(args.model, demo.data, km_labels)
    pre_overrides = [f"optimization.max_update={args.pretrain_updates}"] if args.pretrain_updates else []
    pre_overrides += args.pretrain_overrides
    ft_overrides = [f"optimization.max_update={args.finetune_updates}"] if args.finetune_updates else []
    ft_overrides += ft_labels + args.finetune_overrides
    demo.banner(f"{title} (fairseq-hydra-train)")
    pretrain = demo.train("pretrain", "config/pretraining", pre_labels + pre_overrides, config_name,
                          demo.pretrain_data)
    pretrained = os.path.join(pretrain, "checkpoint_last.pt")
    demo.banner("CTC fine-tuning from the pretrained model and the same from random weights "
                "(fairseq-hydra-train; model.no_pretrained_weights=true)")
    finetune, finetune_argv = demo.train_command("finetune", "config/finetuning",
                                                 [f"model.w2v_path={pretrained}", *ft_overrides], config_name)
    scratch, scratch_argv = demo.train_command(
        "finetune_scratch", "config/finetuning",
        [f"model.w2v_path={pretrained}", "model.no_pretrained_weights=true", *ft_overrides], config_name)
    demo.run_side_by_side([("finetune", finetune_argv), ("finetune_scratch", scratch_argv)])
    return pretrain, finetune, scratch


def decode_all(demo: Demo, runs: Sequence[Tuple[str, str]], lm: Dict[str, str]) -> List[Dict[str, object]]:
    """Viterbi and KenLM decoding of the test subsets for each (fine-tuning save_dir, how it was initialised):
    table rows."""
    rows = []
    for run_dir, init in runs:
        checkpoint = os.path.join(run_dir, "checkpoint_best.pt")
        for decoder in ("viterbi", "kenlm"):
            row = {"model": os.path.relpath(checkpoint, demo.out), "init": init,
                   "decoder": decoder + (" + 4-gram" if decoder == "kenlm" else "")}
            results = os.path.join(demo.out, "results", f"{os.path.basename(run_dir)}-{decoder}")
            for subset in demo.subsets:
                demo.banner(f"decoding {subset} with {decoder}: {os.path.relpath(checkpoint, demo.out)} (infer.py)")
                wer = demo.decode(checkpoint, decoder, results, lm, subset)
                row[subset] = (wer, letter_error_rate(results, checkpoint, subset))
            rows.append(row)
    return rows


def plot_arguments(model: str, out: str, data: str, pretrain: str, finetune: str, scratch: str) -> List[str]:
    """scripts/plot.py's arguments: the three runs' curves, and for wav2vec 2.0 the pictures of its models."""
    argv = ["--out", os.path.join(out, "plots"), "--metrics", f"pretraining={pretrain}/metrics.jsonl",
            f"fine-tuning={finetune}/metrics.jsonl", f"fine-tuning from random weights={scratch}/metrics.jsonl"]
    if model == "wav2vec2":
        argv += ["--pretrained", os.path.join(pretrain, "checkpoint_last.pt"),
                 "--finetuned", os.path.join(finetune, "checkpoint_best.pt"), "--data", data, "--subset", "test"]
    return argv


def main(argv: Sequence[str] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    demo = Demo(args.out, args.corpus)
    print(f"fairseq_lite demo ({args.model}): corpus {demo.corpus}, output {demo.out}", flush=True)
    demo.prepare_data(demo.make_pool(args.pool_utts, args.unseen_utts))
    pretrain, finetune, scratch = train_all(demo, args)
    lm = demo.build_lm()
    config_name = MODELS[args.model][0]
    rows = decode_all(demo, ((finetune, f"pretrained ({config_name}.yaml)"), (scratch, "random weights")), lm)

    if not args.no_plots:
        demo.banner("plots (scripts/plot.py)")
        demo.timed("plots", [sys.executable, "scripts/plot.py",
                             *plot_arguments(args.model, demo.out, demo.data, pretrain, finetune, scratch)])

    total = time.time() - demo.start
    table = wer_table(rows, demo.subsets)
    timings = "\n".join(f"- {name}: {seconds:.0f} s" for name, seconds in demo.timings.items())
    report = f"{table}\n\nStep times (wall clock):\n{timings}\n- total: {total / 60:.1f} min\n"
    with open(os.path.join(demo.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(demo.data, "test.tsv"), encoding="utf-8") as f:
        utterances = sum(1 for _ in f) - 1
    print(f"\n=== results (test split: {utterances} utterances, voices unseen in training"
          + (f"; {UNSEEN}: voices of no other split" if UNSEEN in demo.subsets else "") + f") ===\n{report}")
    print(f"written: {os.path.join(demo.out, 'results.md')}" + ("" if args.no_plots else
                                                                 f", plots in {os.path.join(demo.out, 'plots')}"))


if __name__ == "__main__":
    main()
