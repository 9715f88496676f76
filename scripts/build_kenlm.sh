#!/usr/bin/env bash
# Build an n-gram LM for --w2l-decoder kenlm:  scripts/build_kenlm.sh TEXT ORDER OUT
#
#   TEXT   training text, one sentence per line (words for a word LM; "T H E | C A T |" for a unit LM)
#   ORDER  n-gram order (at most 6, the limit of KenLM's and flashlight's default build)
#   OUT    output file: a KenLM binary when OUT ends in .bin (and build_binary exists), else ARPA text
#
# Uses KenLM's lmplz/build_binary: from PATH, from $KENLM_BIN, or built once from the kenlm source
# package on PyPI into ${XDG_CACHE_HOME:-~/.cache}/fairseq_lite/kenlm/bin (needs cmake, g++ and the
# Boost dev packages). Without them it says which system packages to install and falls back to the
# pure-Python interpolated Kneser-Ney estimator (python -m fairseq_lite.decoding.arpa), writing ARPA.
# Set PYTHON to choose the interpreter (default: python3), KENLM_MEMORY for lmplz -S (default 20%),
# KENLM_NO_BUILD=1 to never compile (use lmplz if found, else the Python estimator).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 TEXT ORDER OUT" >&2
    exit 2
fi
text=$1 order=$2 out=$3
python=${PYTHON:-python3}
[ -f "$text" ] || { echo "error: text file $text does not exist" >&2; exit 1; }
case $order in
    [1-6]) ;;
    *) echo "error: ORDER must be 1-6 (KenLM's maximum order is 6), got $order" >&2; exit 2 ;;
esac

cache=${XDG_CACHE_HOME:-$HOME/.cache}/fairseq_lite/kenlm
apt_packages="cmake g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"

find_tool() {  # $1 = lmplz or build_binary
    for dir in "${KENLM_BIN:-}" "$cache/bin"; do
        if [ -n "$dir" ] && [ -x "$dir/$1" ]; then echo "$dir/$1"; return; fi
    done
    command -v "$1" || true
}

have_build_deps() {
    command -v cmake >/dev/null && command -v g++ >/dev/null &&
        [ -f /usr/include/boost/program_options.hpp ] && [ -d /usr/include/boost/thread ] &&
        [ -d /usr/include/boost/test ]
}

build_from_source() {  # compile lmplz and build_binary from the kenlm sdist (about 1.5 minutes)
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    echo "building lmplz/build_binary from the kenlm source package into $cache/bin" >&2
    "$python" -m pip download --quiet --no-deps --no-binary kenlm -d "$work" kenlm==0.3.0
    tar xzf "$work"/kenlm-0.3.0.tar.gz -C "$work"
    cmake -S "$work/kenlm-0.3.0" -B "$work/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$work/build" --target lmplz build_binary -j"$(nproc)" >/dev/null
    mkdir -p "$cache/bin"
    cp "$work"/build/bin/lmplz "$work"/build/bin/build_binary "$cache/bin/"
}

lmplz=$(find_tool lmplz)
if [ -z "$lmplz" ] && [ -z "${KENLM_NO_BUILD:-}" ] && have_build_deps; then
    build_from_source
    lmplz=$(find_tool lmplz)
fi

mkdir -p "$(dirname "$out")"
if [ -n "$lmplz" ]; then
    build_binary=$(find_tool build_binary)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # --discount_fallback: tiny corpora otherwise abort with BadDiscountException.
    "$lmplz" -o "$order" -S "${KENLM_MEMORY:-20%}" -T "$tmp" --discount_fallback <"$text" >"$tmp/lm.arpa"
    if [[ $out == *.bin ]] && [ -n "$build_binary" ]; then
        "$build_binary" "$tmp/lm.arpa" "$out"
    else
        mv "$tmp/lm.arpa" "$out"
    fi
    echo "wrote $out with $lmplz" >&2
    exit 0
fi

echo "lmplz not found and it cannot be built here; to build it, install: apt-get install $apt_packages" >&2
echo "falling back to the pure-Python estimator (interpolated Kneser-Ney, ARPA output)" >&2
"$python" -m fairseq_lite.decoding.arpa --text "$text" --order "$order" --arpa "$out"
echo "wrote $out (ARPA text; KenLM and flashlight read it directly)" >&2
