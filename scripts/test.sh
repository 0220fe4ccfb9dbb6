#!/usr/bin/env bash
# Install everything into .venv (CPU torch first) and run the checks: ruff, mypy, pytest.
# The README's test command; CI (.ci/run) calls exactly this on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --upgrade pip
# CPU torch first: the default index serves the multi-GB CUDA build on Linux. The CPU index is asked
# first with a short timeout and no retries, so where it is unreachable this costs seconds and the
# default index (or a local wheel mirror) is used instead.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install --quiet --timeout 10 --retries 0 \
      --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    || "$VPY" -m pip install --quiet "torch==2.13.0"
fi
"$VPY" -m pip install --quiet -e '.[local,test]'

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "== ruff"
"$VPY" -m ruff check .
"$VPY" -m ruff format --check .
echo "== mypy"
"$VPY" -m mypy
echo "== pytest"
"$VPY" -m pytest -q "$@"
