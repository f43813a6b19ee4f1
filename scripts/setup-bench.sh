#!/usr/bin/env bash
# Installs the llama.cpp peer of `nextword bench compare` (llama-cpp-python, pinned by the `bench`
# extra in pyproject.toml) into .venv.
# llama-cpp-python ships no wheel on PyPI, so pip compiles llama.cpp from source (5-15 min on 2
# cores). The wheel is built ONCE into a cache ($NEXTWORD_WHEELS, default ~/.cache/nextword/wheels)
# and installed from there, so a fresh clone or a recreated venv installs it in seconds.
# Idempotent: returns at once when the pinned version is already importable.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
VERSION="$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml")"  # the `bench` extra
WHEELS="${NEXTWORD_WHEELS:-$HOME/.cache/nextword/wheels}"

log() { printf '[setup-bench] %s\n' "$*" >&2; }

if "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    exit 0
fi
mkdir -p "$WHEELS"
if ! compgen -G "$WHEELS/llama_cpp_python-$VERSION-*.whl" >/dev/null; then
    log "building llama-cpp-python $VERSION from source into $WHEELS (5-15 min, niced)"
    # A CPU build for this machine's instruction set (llama.cpp's default, GGML_NATIVE).
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" nice -n 19 "$PY" -m pip wheel --quiet --disable-pip-version-check \
        --no-deps "llama-cpp-python==$VERSION" -w "$WHEELS"
fi
log "installing llama-cpp-python $VERSION from $WHEELS"
"$PY" -m pip install --quiet --disable-pip-version-check --find-links "$WHEELS" "llama-cpp-python==$VERSION"
