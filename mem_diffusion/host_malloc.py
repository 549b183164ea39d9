"""glibc malloc settings that stop a large CPU step from re-faulting its memory.

Measured on 2-core AMD EPYC machines (docs/benchmarks.md, "Host memory"):
a UNet-128 batch-32 train step on CPU took ~1.2 million minor page faults
(about 5 GB of freshly zeroed pages) every step, and the process spent ~17%
of its CPU time in the kernel. XLA:CPU allocates its buffers with malloc;
glibc serves large requests, and any request from a worker thread's arena
that does not fit that arena's 64 MB heap, with mmap and hands them back with
munmap on free, so every step maps, faults and zeroes the same gigabytes.

Three mallopt calls keep that memory in the process: no mmap for large
blocks (M_MMAP_MAX=0), no trimming of the heap top (M_TRIM_THRESHOLD=SIZE_MAX)
and one arena (M_ARENA_MAX=1, so worker threads allocate from the growable
main heap instead of 64 MB thread heaps that fall back to mmap). The batch-32
step then ran 1.16x faster; without the single arena nothing changed.

They are not for every run. The toy model's step makes thousands of small
allocations from several threads, and one arena makes them queue on one
lock: the toy train loop ran 1.6x SLOWER with them. So they are chosen per
config, for runs whose feature maps are large (`LARGE_FEATURE_MAP_BYTES`),
and only where they were measured to help: Linux with glibc and a CPU-only
JAX (no GPU or TPU plugin installed, or JAX_PLATFORMS=cpu). On an
accelerator host the big buffers live on the device. The price is that the
process keeps its peak host memory until it exits.

M_ARENA_MAX only binds threads that have not allocated yet, so the settings
must come before JAX starts its backend (runtime.setup does this for main.py
and the sweep); once JAX runs, `apply_for` leaves malloc alone.
MEM_DIFFUSION_MALLOC_DEFAULTS=0 turns them off, =1 forces them on. Results
do not change: only where the memory comes from does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import pkgutil
import sys

OPT = "MEM_DIFFUSION_MALLOC_DEFAULTS"

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# mallopt takes an int; glibc stores the trim threshold as size_t, so -1
# becomes SIZE_MAX: the heap top is never given back.
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))

# The largest float32 feature map (batch x H x W x model_channels) from which
# a run counts as large: UNet-128 at batch 32 and 32x32 (16 MiB, 1.16x
# faster). At batch 8 (4 MiB) the gain was within the noise (~3%); the toy
# study's maps are well under 1 MiB.
LARGE_FEATURE_MAP_BYTES = 16 * 2**20

_ACCELERATOR_PREFIXES = ("libtpu", "jax_cuda", "jax_rocm")
_applied = False


def accelerator_plugins() -> list[str]:
  """Installed JAX accelerator plugins (found without importing JAX)."""
  found = [m.name for m in pkgutil.iter_modules()
           if m.name.startswith(_ACCELERATOR_PREFIXES)]
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    found += [m.name for m in pkgutil.iter_modules(
        list(spec.submodule_search_locations))]
  return found


def cpu_only(environ=os.environ, *, plugins=accelerator_plugins) -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS says so, or nothing else
  is installed."""
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not plugins()


def largest_feature_map_bytes(config) -> int:
  """float32 bytes of the UNet's widest full-resolution map, for the larger of
  the training and sampling batches (both run in a main.py process)."""
  batch = max(config.training.batch_size, config.sampling.batch_size)
  return 4 * batch * config.data.image_size ** 2 * config.model.model_channels


def wanted(config, environ=os.environ, *, plugins=accelerator_plugins) -> bool:
  choice = environ.get(OPT, "")
  if choice in ("0", "1"):
    return choice == "1"
  return (largest_feature_map_bytes(config) >= LARGE_FEATURE_MAP_BYTES
          and cpu_only(environ, plugins=plugins))


def glibc():
  """The process's glibc through ctypes, or None elsewhere (musl, macOS)."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
    libc.mallopt  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    return None
  return libc


def jax_started() -> bool:
  """Whether a JAX backend (and with it XLA's worker threads) already runs."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def apply_for(config, environ=os.environ, *, plugins=accelerator_plugins,
              libc=None, started=jax_started) -> bool:
  """Sets the malloc options if this config wants them and JAX has not
  started; True when glibc took all of them (now or earlier in the process)."""
  global _applied
  if _applied:
    return True
  if not wanted(config, environ, plugins=plugins) or started():
    return False
  libc = libc or glibc()
  if libc is None:
    return False
  _applied = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
  return _applied


def applied() -> bool:
  """Whether this process runs with the settings (for logs and benchmarks)."""
  return _applied
