"""CPU tuning that an entry point applies to its own process, visibly.

Nothing here runs at import: importing the package leaves the environment
and JAX's backends alone. An entry point (main.py, the sweep, the capacity
search, the chain comparison, the step benchmarks) calls `apply(...)` first
thing in its main(), through cli.prepare_process, which says what it set;
the run records the result (mem_diffusion/run/environment.py). Both
mechanisms apply only when the run is on the CPU: JAX_PLATFORMS's first
entry decides, or, without it, whether an accelerator plugin and its device
files are present (no backend is started to find out). Each has its own
switch, a flag with an environment fallback, on by default; turning one off
leaves the other on. Measured in docs/benchmarks.md, "CPU tuning".

- XLA flag (`--xla_cpu_tuning`, MEM_DIFFUSION_XLA_CPU_TUNING):
  `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` leaves
  single convolutions to Eigen instead of YNNPACK, which runs the train
  steps faster here. It is experimental, and XLA aborts the whole process
  (a C++ check, not a Python error) on a flag it does not know, so it is
  added only when the installed jaxlib's shared libraries contain its name,
  where XLA registers its flags. A value of it already in XLA_FLAGS wins.
  XLA reads XLA_FLAGS when its first backend starts, so setting it in the
  process's own environment before then is enough.
- Huge pages (`--huge_pages`, MEM_DIFFUSION_HUGE_PAGES): XLA:CPU takes each
  execution's temporary memory in one malloc (1.26 GB for a UNet-128 batch
  of 8), which glibc serves with a fresh mmap, so every execution faults it
  in again 4 KiB at a time. GLIBC_TUNABLES=glibc.malloc.hugetlb=1 has glibc
  ask for transparent huge pages there (glibc >= 2.35, the kernel's THP mode
  `madvise`; with `always` the kernel does it anyway). glibc reads the
  variable only when a process starts. A launcher that sets it serves best:
  the sweep puts it in its workers' environment, and a user may export it.
  Otherwise the entry point restarts itself once with it (os.execve: same
  pid, interpreter and arguments), except under a debugger or profiler,
  which would lose the process. A GLIBC_TUNABLES naming the tunable wins.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import mmap
import os
import sys
from typing import Callable, Iterable, Mapping, MutableMapping, Sequence

YNN_FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
YNN_FLAG = f"--{YNN_FLAG_NAME}=-individual_convolution"
XLA_TUNING_ENV = "MEM_DIFFUSION_XLA_CPU_TUNING"
HUGE_PAGES_ENV = "MEM_DIFFUSION_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
MIN_GLIBC = (2, 35)
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# Accelerator plugins and the device files that show their hardware is here.
_ACCELERATORS = (
    (("jax_cuda12_plugin", "jax_cuda13_plugin"), ("/dev/nvidia[0-9]*",)),
    (("jax_rocm60_plugin", "jax_rocm7_plugin"), ("/dev/kfd",)),
    (("libtpu",), ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")),
)


def switch(flag_value: bool | None, environ: Mapping[str, str], name: str,
           default: bool = True) -> bool:
  """A switch's value: the command-line flag when given, else the variable
  `name` (1/0, true/false, yes/no, on/off), else `default`."""
  if flag_value is not None:
    return bool(flag_value)
  raw = environ.get(name, "").strip().lower()
  if raw in _TRUE:
    return True
  if raw in _FALSE:
    return False
  if raw:
    raise ValueError(f"{name}={environ[name]!r}: expected 1 or 0")
  return default


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def accelerator_present() -> bool:
  """Whether an accelerator plugin is installed and its device files exist."""
  return any(any(map(_installed, modules)) and any(glob.glob(p) for p in paths)
             for modules, paths in _ACCELERATORS)


def runs_on_cpu(environ: Mapping[str, str], *,
                accelerator: Callable[[], bool] = accelerator_present) -> bool:
  """Whether JAX will pick the CPU, decided without starting a backend.

  JAX_PLATFORMS names the platforms in order of preference, so its first
  entry decides; without it JAX prefers any accelerator it can find.
  """
  platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",")
               if p.strip()]
  if platforms:
    return platforms[0] == "cpu"
  return not accelerator()


def jaxlib_binaries() -> list[str]:
  """The installed jaxlib's shared libraries, found without importing it."""
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


def with_xla_tuning(xla_flags: str, *, knows: Callable[[str], bool] = jaxlib_knows) -> str:
  """XLA_FLAGS with the tuning flag added, unless the user set the flag (to
  any value) or the jaxlib does not know it."""
  if YNN_FLAG_NAME in xla_flags or not knows(YNN_FLAG_NAME):
    return xla_flags
  return f"{xla_flags} {YNN_FLAG}".strip()


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


def huge_pages_help(*, platform: str | None = None, glibc: tuple[int, int] | None = None,
                    mode: str | None = None) -> bool:
  """Whether the tunable exists and would change anything on this machine
  (arguments None: this machine's)."""
  platform = sys.platform if platform is None else platform
  glibc = glibc_version() if glibc is None else glibc
  mode = thp_mode() if mode is None else mode
  return platform.startswith("linux") and glibc is not None and glibc >= MIN_GLIBC \
      and mode == "madvise"


def tuned_environment(environ: Mapping[str, str], *, xla_cpu_tuning: bool | None = None,
                      huge_pages: bool | None = None, on_cpu: bool | None = None,
                      knows: Callable[[str], bool] = jaxlib_knows,
                      huge_pages_work: Callable[[], bool] | None = None) -> dict[str, str]:
  """The variables to change in `environ` (empty: nothing to do).

  `xla_cpu_tuning`, `huge_pages`: the command-line flags (None: not given);
  `on_cpu` None is decided by runs_on_cpu.
  """
  xla = switch(xla_cpu_tuning, environ, XLA_TUNING_ENV)
  huge = switch(huge_pages, environ, HUGE_PAGES_ENV)
  if not (xla or huge) or not (runs_on_cpu(environ) if on_cpu is None else on_cpu):
    return {}
  changes = {}
  current = environ.get("XLA_FLAGS", "")
  if xla and with_xla_tuning(current, knows=knows) != current:
    changes["XLA_FLAGS"] = with_xla_tuning(current, knows=knows)
  tunables = environ.get("GLIBC_TUNABLES", "")
  if huge and TUNABLE not in tunables and (huge_pages_work or huge_pages_help)():
    changes["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))
  return changes


def under_debugger() -> bool:
  """A tracer or profiler is installed, or a debugger's module is loaded:
  restarting the process would leave it behind."""
  return (sys.gettrace() is not None or sys.getprofile() is not None
          or any(m in sys.modules for m in ("pydevd", "debugpy")))


def apply(environ: MutableMapping[str, str] | None = None, *,
          xla_cpu_tuning: bool | None = None, huge_pages: bool | None = None,
          restart: bool = False, say: Callable[[str], None] = print,
          argv: Sequence[str] | None = None) -> dict[str, str]:
  """Applies the tuning to `environ` (this process's by default, which must
  not have started a JAX backend yet) and returns what it set.

  The huge-page tunable only reaches processes started from now on: with
  `restart` this process restarts itself once with it (unless a debugger
  or profiler is attached, when it is left out); without, it is set for
  the children (a sweep's workers). A switch given on the command line is
  also written to its variable, so that those children decide the same way.
  """
  environ = os.environ if environ is None else environ
  before = environ.get("GLIBC_TUNABLES")
  changes = tuned_environment(environ, xla_cpu_tuning=xla_cpu_tuning, huge_pages=huge_pages)
  for name, value in ((XLA_TUNING_ENV, xla_cpu_tuning), (HUGE_PAGES_ENV, huge_pages)):
    if value is not None:
      changes[name] = "1" if value else "0"
  if "GLIBC_TUNABLES" in changes and restart and under_debugger():
    say("huge pages: off under a debugger or profiler (export GLIBC_TUNABLES="
        f"{TUNABLE}=1 before Python starts to have them)")
    del changes["GLIBC_TUNABLES"]
  environ.update(changes)
  if "XLA_FLAGS" in changes:
    say(f"cpu tuning: XLA_FLAGS={changes['XLA_FLAGS']} (--noxla_cpu_tuning: off)")
  if "GLIBC_TUNABLES" in changes and restart:
    say(f"cpu tuning: restarting with GLIBC_TUNABLES={changes['GLIBC_TUNABLES']} "
        "(--nohuge_pages: off)")
    _restart(environ, argv)
    # Still here: the restart failed, so this process runs without them.
    say("cpu tuning: the restart failed; running without huge pages")
    del changes["GLIBC_TUNABLES"]
    if before is None:
      environ.pop("GLIBC_TUNABLES", None)
    else:
      environ["GLIBC_TUNABLES"] = before
  return changes


def _restart(environ: Mapping[str, str], argv: Sequence[str] | None) -> None:
  """Replaces this process by itself under `environ`; returns only if that fails."""
  if not sys.executable:
    return
  args = list(sys.orig_argv if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable] + args[1:], dict(environ))
  except OSError:  # e.g. an interpreter path that no longer exists
    return


def define_flags(flags_module) -> None:
  """The entry points' switches (each also takes --noNAME)."""
  flags_module.DEFINE_bool(
      "xla_cpu_tuning", None,
      "On CPU, add the XLA flag that runs single convolutions through Eigen "
      f"({YNN_FLAG}); default: ${XLA_TUNING_ENV}, else on. Recorded in config.json.")
  flags_module.DEFINE_bool(
      "huge_pages", None,
      f"On CPU, run with GLIBC_TUNABLES={TUNABLE}=1 (restarting once if it is not "
      f"set); default: ${HUGE_PAGES_ENV}, else on. Recorded in config.json.")
