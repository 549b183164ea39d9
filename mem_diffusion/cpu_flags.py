"""XLA:CPU settings the project chooses for itself, set before JAX starts.

Measured on 2-core AMD EPYC machines (docs/benchmarks.md, "CPU step"): with
the jaxlib that Python 3.11 installs (0.10.x), XLA:CPU runs convolutions
through YNNPACK, and inside the full UNet train step those convolutions run
slower than the same convolution alone. Asking XLA to leave individual
convolutions to Eigen (`--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution`) made the UNet-128 step 1.10-1.13x faster, and the
toy step ~1.2x. A CPU user should get that without knowing the flag.

The flag is experimental, and XLA aborts the whole process (a C++ check, not
a Python error) on a flag it does not know. Newer jaxlibs may rename or drop
it. So it is added only when the installed jaxlib's binary contains the flag's
name, which is where XLA registers its flags; otherwise nothing is added.

XLA reads XLA_FLAGS once, when the first backend starts, so this runs at
package import (mem_diffusion/__init__.py). A user who sets the flag
themselves, or sets MEM_DIFFUSION_XLA_CPU_DEFAULTS=0, gets exactly their own
XLA_FLAGS. The flag only affects CPU compilation; GPU and TPU programs are
unchanged.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import mmap
import os
from typing import Iterable

YNN_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"--{YNN_FLAG_NAME}=-individual_convolution"
OPT_OUT = "MEM_DIFFUSION_XLA_CPU_DEFAULTS"


def jaxlib_binaries() -> list[str]:
  """The shared libraries of the installed jaxlib (found without importing it:
  importing jaxlib is cheap, but this must not start anything)."""
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return []
  root = list(spec.submodule_search_locations)[0]
  return sorted(glob.glob(os.path.join(root, "**", "*.so"), recursive=True))


def binary_knows(flag_name: str, paths: Iterable[str]) -> bool:
  """True when one of `paths` contains the flag's name as bytes."""
  needle = flag_name.encode()
  for path in paths:
    try:
      with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
          continue
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
          if m.find(needle) >= 0:
            return True
    except (OSError, ValueError):
      continue
  return False


@functools.cache
def jaxlib_knows(flag_name: str) -> bool:
  return binary_knows(flag_name, jaxlib_binaries())


def with_cpu_defaults(xla_flags: str, *, knows=jaxlib_knows) -> str:
  """XLA_FLAGS with the project's CPU defaults added where safe.

  Unchanged when the user already set the flag (any value) or the jaxlib
  does not know it.
  """
  if YNN_FLAG_NAME in xla_flags or not knows(YNN_FLAG_NAME):
    return xla_flags
  return f"{xla_flags} {YNN_FLAG}".strip()


def apply(environ=os.environ, *, knows=jaxlib_knows) -> None:
  """Sets XLA_FLAGS in `environ` (the process environment by default)."""
  if environ.get(OPT_OUT, "1") == "0":
    return
  current = environ.get("XLA_FLAGS", "")
  updated = with_cpu_defaults(current, knows=knows)
  if updated != current:
    environ["XLA_FLAGS"] = updated
