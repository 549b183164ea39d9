"""glibc's transparent-huge-page malloc, which entry points turn on for themselves.

Why. XLA:CPU gets each execution's temporary memory with one malloc (1.26 GB
for a UNet-128 micro-batch of 8). glibc serves a request that large with a
fresh mmap and unmaps it when it is freed, so every call faults the same
memory in again, 4 KiB at a time: 308 thousand minor faults per micro-batch
call, 1.3 million per batch-32 step, about an eighth of the step's CPU time
in the kernel (docs/benchmarks.md, "Huge pages"). With the glibc tunable
`glibc.malloc.hugetlb=1`, glibc asks the kernel for transparent huge pages on
those mappings (madvise), which cuts the faults about 9x. The same setting
left the toy loop as fast or faster.

How. glibc reads GLIBC_TUNABLES once, when a process starts, so it cannot be
set from Python for the running process. An entry point (main.py, the sweep,
benchmarks/train_step.py) calls `reexec_with_huge_pages()` first thing: when
the setting would help and is missing, the process replaces itself (os.execve:
same pid, interpreter and arguments) with the variable added, once. It does
nothing when:
- the C library is not glibc 2.35 or newer (the tunable's first release), or
  the OS is not Linux;
- the kernel's THP mode is not `madvise` (with `always` the kernel already
  uses huge pages for large mappings; with `never` the request is ignored);
- GLIBC_TUNABLES already names glibc.malloc.hugetlb (the user's value wins);
- MEM_DIFFUSION_XLA_CPU_DEFAULTS=0 (the switch for all of the project's CPU
  defaults, mem_diffusion/cpu_flags.py);
- the process is already the re-executed one (REEXEC_MARKER is set).
It runs before JAX knows its backend, so GPU and TPU runs get the setting
too; there it only changes how host memory is mapped.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

from mem_diffusion import cpu_flags

TUNABLE = "glibc.malloc.hugetlb"
REEXEC_MARKER = "MEM_DIFFUSION_HUGE_PAGES_REEXEC"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None for another C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's THP mode, the bracketed word of e.g. 'always [madvise] never'."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def environment_with_huge_pages(environ: Mapping[str, str], *,
                                platform: str, glibc: tuple[int, int] | None,
                                mode: str | None) -> dict[str, str] | None:
  """The environment to re-execute with, or None when nothing is to be done."""
  if (not platform.startswith("linux") or glibc is None or glibc < MIN_GLIBC
      or mode != "madvise" or environ.get(cpu_flags.OPT_OUT, "1") == "0"
      or environ.get(REEXEC_MARKER) or TUNABLE in environ.get("GLIBC_TUNABLES", "")):
    return None
  tunables = ":".join(filter(None, [environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]))
  return {**environ, "GLIBC_TUNABLES": tunables, REEXEC_MARKER: "1"}


def reexec_with_huge_pages(argv: Sequence[str] | None = None) -> None:
  """Replaces this process by itself with the tunable set (module docstring),
  or returns at once. `argv` defaults to the interpreter's own command line."""
  env = environment_with_huge_pages(os.environ, platform=sys.platform,
                                    glibc=glibc_version(), mode=thp_mode())
  if env is None or not sys.executable:
    return
  args = list(argv) if argv is not None else list(sys.orig_argv)
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + args[1:], env)
  except OSError:  # e.g. an interpreter path that no longer exists: run as started
    return
