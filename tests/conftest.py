"""Test-wide setup, fixed before JAX initialises its backend.

- Several fake CPU devices, so sharding code runs as on a pod.
- The entry points' XLA:CPU flag (mem_diffusion/run/cpu_tuning.py), so that
  in-process runs and main.py subprocesses compute under the same XLA_FLAGS
  (a resume under other ones is refused); huge pages off, which the
  subprocesses inherit, so that none restarts itself.
- One persistent compilation cache for the whole session, inherited by the
  subprocess tests (main.py runs, the 2-process run): most of the suite's
  time is XLA compiling the same tiny train step and sampler again in other
  processes, and the cache turns those into loads. It lives in a fresh
  temporary folder per session, so no state survives between runs.
"""

import os
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as the entry points do; tests import tfds first
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mem_diffusion_jax_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

from mem_diffusion.run import cpu_tuning  # pylint: disable=g-import-not-at-top,wrong-import-position

cpu_tuning.apply(huge_pages=False, say=lambda line: None)
