#!/usr/bin/env bash
# One-GPU check (benchmarks/gpu_check.py): environment, then the script.
#
#   bash benchmarks/gpu_check.sh --out_dir=gpu_check_out [--reference_dir=DIR]
#
# On an image without ml-collections / PyYAML, their wheels are installed from
# the repository's .whl/ folder when it is there (the `pip download` command
# that fills it is in gpu_check.py's docstring); nothing is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."

export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# A PyTorch reference shares the device in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# XLA_FLAGS pass through unchanged (the JSON records them): the check measures
# what a plain run gets, and XLA aborts on flags its version does not know.
export XLA_FLAGS="${XLA_FLAGS:-}"

PYTHON="${PYTHON:-python3}"
have_deps() { "$PYTHON" -c "import ml_collections, yaml" 2>/dev/null; }
if ! have_deps && [ -d .whl ]; then
  if ! "$PYTHON" -m pip install --no-index --find-links .whl ml-collections PyYAML; then
    # pip refused (say, an externally managed system Python): both import
    # straight from their wheels (PyYAML then uses its pure-Python parser).
    PYTHONPATH="$(printf '%s:' "$PWD"/.whl/*.whl)${PYTHONPATH:-}"
    export PYTHONPATH="${PYTHONPATH%:}"
  fi
fi
if ! have_deps; then
  echo "error: ml-collections / PyYAML missing and not installable from .whl/ (see benchmarks/gpu_check.py)" >&2
  exit 2
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
