#!/usr/bin/env bash
# The GPU check on a machine with a CUDA GPU and a python3 that holds a CUDA torch (scripts/bench/gpu_check.py).
# fairseq_lite's other dependencies come as wheels from .whl/ (`make gpu-wheels` where pip can reach PyPI), since
# such a machine may have no network. Writes ${1:-.}/gpu_check.json; the whole check stays under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
out_dir="${1:-.}"
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fairseq_lite_site .whl/*.whl
  export PYTHONPATH="/tmp/fairseq_lite_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out_dir"
timeout 470 "$python" scripts/bench/gpu_check.py --out "$out_dir/gpu_check.json"
