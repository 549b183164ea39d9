#!/usr/bin/env bash
# One-GPU check (benchmarks/gpu_check.py): environment, then the script.
#
#   bash benchmarks/gpu_check.sh --out_dir=gpu_check_out [--reference_dir=DIR]
#
# Needs JAX with its accelerator plugin, flax, optax and orbax-checkpoint:
# what a bare accelerator image has. ml-collections and TensorFlow are not
# needed (gpu_check.py says why), and nothing is installed or fetched.
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
missing=$("$PYTHON" - <<'PY'
import importlib.util
print(" ".join(m for m in ("jax", "flax", "optax", "orbax.checkpoint", "absl", "numpy")
               if importlib.util.find_spec(m.split(".")[0]) is None))
PY
)
if [ -n "$missing" ]; then
  echo "error: $PYTHON lacks $missing (the check needs JAX, flax, optax and orbax-checkpoint)" >&2
  exit 2
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
