"""Genuine fairseq 0.12.2 fixture: what ``examples/speech_recognition/new/infer.py`` writes when it decodes.

Run with the genuine-fairseq venv only (never imported by fairseq_lite), after ``wav2vec2_fixtures.py``::

    ~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python scripts/fairseq_fixtures/new_infer_fixtures.py

fairseq's new/infer.py viterbi-decodes the two utterances of the ``w2v2_ctc_base_10m`` fixture (its fine-tuned
checkpoint and audio; subset ``test`` = those files with their ``ltr``/``wrd`` transcripts) twice:

- ``default/``: fairseq's own default config (new/conf/infer.yaml) with ``task=audio_finetuning task.labels=ltr``
  and ``decoding.results_path``: the four result files ``hypo.word``, ``hypo.units``, ``ref.word``, ``ref.units``
  and ``wer`` (``<results>`` stands for the results path inside it);
- ``hubert_viterbi/``: HuBERT's ``examples/hubert/config/decode/infer_viterbi.yaml`` as it is, its task switched to
  ``audio_finetuning`` by overrides (fairseq's ``hubert_pretraining`` would crop the batch to its shortest
  utterance, PR #3998): the ``wer.<n>`` file ``unique_wer_file`` names, found in ``hydra.run.dir``
  (``${common_eval.results_path}/viterbi``), since that yaml sets no ``decoding.results_path``.

``meta.json`` holds the versions, both command lines (``<data>``, ``<checkpoint>``, ``<results>``, ``<run>`` for
paths), the subset files and the ``Word error rate`` line fairseq logged. ``tests/test_infer_hydra.py`` runs
fairseq_lite's new/infer.py the same way and compares the files byte for byte.

fairseq's new/infer.py does not import on Python 3.11 as shipped (``decoding: DecodingConfig = DecodingConfig()``
is a mutable dataclass default); this script runs it with the rewrite the genuine venv applies to fairseq's own
configs (``../shared/tools/setup_fairseq_venv.sh``, patch 1) made in memory, the file on disk untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FIXTURES, fairseq_dir, generator_main, run_fairseq, versions  # noqa: E402

SOURCE = "w2v2_ctc_base_10m"
NAME = "new_infer_viterbi"
RUN_FLAG = "--run-new-infer"
RESULT_FILES = ("hypo.word", "hypo.units", "ref.word", "ref.units", "wer")
DEFAULT_OVERRIDES = ["task=audio_finetuning", "task.labels=ltr", "task.data=<data>", "common_eval.path=<checkpoint>",
                     "dataset.gen_subset=test", "common.cpu=true", "common_eval.quiet=false",
                     "decoding.results_path=<results>", "hydra.run.dir=<run>"]
HUBERT_OVERRIDES = ["task._name=audio_finetuning", "~task.single_target", "~task.fine_tuning", "+task.labels=ltr",
                    "task.data=<data>", "task.normalize=false", "common_eval.path=<checkpoint>",
                    "dataset.gen_subset=test", "common_eval.results_path=<results>", "common.cpu=true"]


def run_new_infer(argv: list) -> None:
    """Execute fairseq's new/infer.py as ``__main__`` with ``argv``, its mutable dataclass defaults rewritten."""
    import fairseq.examples

    path = os.path.join(fairseq_dir(), "examples", "speech_recognition", "new", "infer.py")
    with open(path) as f:
        source = re.sub(r"^(\s+\w+: (\w+Config)) = \2\(\)\s*$", r"\1 = field(default=\2)", f.read(), flags=re.M)
    sys.modules["examples"] = fairseq.examples  # the script imports examples.speech_recognition.new...
    sys.argv = [path, *argv]
    code = compile(source, path, "exec", dont_inherit=True)  # not this file's `from __future__ import annotations`
    exec(code, {"__name__": "__main__", "__file__": path})


def write_subset(data: str) -> dict:
    """``test.tsv/ltr/wrd`` over the source fixture's audio, and its dict.ltr.txt, in ``data``; returns the texts."""
    import soundfile as sf

    source = os.path.join(FIXTURES, SOURCE)
    with open(os.path.join(source, "meta.json")) as f:
        meta = json.load(f)
    lines = [f"{name}\t{sf.info(os.path.join(source, name)).frames}" for name in meta["audio"]]
    files = {"test.tsv": "".join(line + "\n" for line in lines), "test.ltr": "".join(t + "\n" for t in meta["ltr"]),
             "test.wrd": "".join(t + "\n" for t in meta["texts"])}
    os.makedirs(data, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(data, name), "w") as f:
            f.write(source + "\n" + text if name.endswith(".tsv") else text)
    shutil.copyfile(os.path.join(source, "dict.ltr.txt"), os.path.join(data, "dict.ltr.txt"))
    return files


def decode(overrides: list, paths: dict, head: list, log: str) -> str:
    """Run new/infer.py with ``head`` flags and ``overrides`` (placeholders filled from ``paths``); returns its log."""
    filled = []
    for override in overrides:
        for key, value in paths.items():
            override = override.replace(f"<{key}>", value)
        filled.append(override)
    run_fairseq([os.path.abspath(__file__), RUN_FLAG, *head, *filled], log)
    with open(log) as f:
        return f.read()


def logged_wer(log_text: str) -> str:
    return [line[line.index("Word error rate"):] for line in log_text.splitlines() if "Word error rate" in line][-1]


def generate(out_dir: str) -> None:
    folder = os.path.join(out_dir, NAME)
    with tempfile.TemporaryDirectory() as work:
        paths = {"data": os.path.join(work, "data"), "checkpoint": os.path.join(FIXTURES, SOURCE, "checkpoint.pt")}
        subset = write_subset(paths["data"])
        default = dict(paths, results=os.path.join(work, "results"), run=os.path.join(work, "run"))
        os.makedirs(default["results"])  # fairseq's new/infer.py does not create it
        default_log = decode(DEFAULT_OVERRIDES, default, [], os.path.join(work, "default.log"))
        hubert = dict(paths, results=os.path.join(work, "hubert"))
        hubert_dir = os.path.join(fairseq_dir(), "examples", "hubert", "config", "decode")
        hubert_log = decode(HUBERT_OVERRIDES, hubert, ["--config-dir", hubert_dir, "--config-name", "infer_viterbi"],
                            os.path.join(work, "hubert.log"))
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.join(folder, "default"))
        for name in RESULT_FILES:
            with open(os.path.join(default["results"], name)) as f:
                text = f.read().replace(default["results"], "<results>")
            with open(os.path.join(folder, "default", name), "w") as f:
                f.write(text)
        wer_files = [n for n in os.listdir(os.path.join(hubert["results"], "viterbi")) if n.startswith("wer")]
        os.makedirs(os.path.join(folder, "hubert_viterbi"))
        shutil.copyfile(os.path.join(hubert["results"], "viterbi", wer_files[0]),
                        os.path.join(folder, "hubert_viterbi", wer_files[0]))
    meta = {**versions(), "source": SOURCE, "subset": subset,
            "default": {"command": "new/infer.py " + " ".join(DEFAULT_OVERRIDES), "overrides": DEFAULT_OVERRIDES,
                        "logged": logged_wer(default_log)},
            "hubert_viterbi": {"command": "new/infer.py --config-dir examples/hubert/config/decode --config-name "
                                          "infer_viterbi " + " ".join(HUBERT_OVERRIDES),
                               "overrides": HUBERT_OVERRIDES, "wer_file": wer_files[0],
                               "logged": logged_wer(hubert_log)}}
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {folder}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == RUN_FLAG:
        run_new_infer(sys.argv[2:])
    else:
        generator_main(__doc__.splitlines()[0], generate)
