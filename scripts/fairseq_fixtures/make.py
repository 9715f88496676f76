"""Regenerate every genuine-fairseq fixture: ``make fairseq-fixtures`` (builds the genuine venv first).

Both directions, each with the interpreter it needs:

- in the genuine fairseq 0.12.2 venv: ``schema.py`` (fairseq's config keys, package data) and the generators
  of files fairseq writes (``wav2vec2_fixtures.py``, ``hubert_fixtures.py``, ``legacy_fixtures.py`` →
  ``tests/fixtures/fairseq/``);
- in the project venv: ``write_ours.py`` (files fairseq_lite writes → ``tests/fixtures/fairseq_lite_written/``),
  then ``read_ours.py`` in the genuine venv (what fairseq computes on them).

Nothing here is imported by fairseq_lite or needed by ``make test``: the tests read the committed outputs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_FAIRSEQ_PYTHON = os.path.expanduser("~/.cache/fairseq_lite/fairseq-0.12.2-venv/bin/python")

#: (script, which interpreter) in the order they must run.
STEPS = [("schema.py", "fairseq"), ("wav2vec2_fixtures.py", "fairseq"), ("new_infer_fixtures.py", "fairseq"),
         ("hubert_fixtures.py", "fairseq"),
         ("legacy_fixtures.py", "fairseq"), ("hubert_units_fixtures.py", "fairseq"),
         ("hubert_dataset_fixtures.py", "fairseq"), ("write_ours.py", "project"), ("read_ours.py", "fairseq")]

#: The steps that take ``--only NAME...`` (fixtures of tests/fixtures/fairseq_lite_written/).
PER_FIXTURE = ("write_ours.py", "read_ours.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fairseq-python", default=os.environ.get("FAIRSEQ_PYTHON", DEFAULT_FAIRSEQ_PYTHON),
                        help="python of the genuine-fairseq venv (../shared/tools/setup_fairseq_venv.sh)")
    parser.add_argument("--project-python", default=sys.executable, help="python with fairseq_lite installed")
    parser.add_argument("--only", nargs="*", help="run only these steps (script names)")
    parser.add_argument("--fixtures", nargs="*", metavar="NAME", help=f"{' and '.join(PER_FIXTURE)} write and "
                        "read only these fixtures (write_ours.py --help lists them), e.g. --only write_ours.py "
                        "read_ours.py --fixtures hubert_base_pretrain hubert_ctc_base_10h")
    args = parser.parse_args()
    if not os.access(args.fairseq_python, os.X_OK):
        raise SystemExit(f"error: {args.fairseq_python} is not an executable python: build the genuine-fairseq "
                         "venv with ../shared/tools/setup_fairseq_venv.sh or pass --fairseq-python")
    interpreters = {"fairseq": args.fairseq_python, "project": args.project_python}
    for script, which in STEPS:
        if args.only and script not in args.only:
            continue
        print(f"== {script} ({which} venv)", flush=True)
        # hubert_units_fixtures.py also runs fairseq_lite's learn_kmeans.py, with the project's python
        env = dict(os.environ, FAIRSEQ_LITE_PYTHON=args.project_python)
        selected = ["--only", *args.fixtures] if args.fixtures and script in PER_FIXTURE else []
        subprocess.run([interpreters[which], os.path.join(HERE, script), *selected], cwd=REPO, check=True, env=env)


if __name__ == "__main__":
    main()
