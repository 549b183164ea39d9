"""Process set-up shared by every entry point: quiet logs and the compile cache.

Called once, after flag parsing and before the first JAX computation, by
main.py, the sweep and the CLIs. Two reasons it is one module:

- A run should speak plainly. orbax, absl and JAX log dozens of INFO lines
  (checkpoint handler registries, read throughput, "Unable to initialize
  backend 'tpu'") that bury the result; they stay off unless `--verbose`.
  The project's own progress and results are printed, not logged, so they
  show either way.
- Compiling the UNet-128 costs 40-120 s on a CPU and tens of seconds on a
  GPU, again for every resume, sample and eval process. JAX's persistent
  compilation cache makes the second start a load instead.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

# Where compiled programs are kept unless a flag or JAX_COMPILATION_CACHE_DIR
# says otherwise: per user, shared by all runs (a program is keyed by its HLO,
# device and flags, so sharing is safe).
DEFAULT_COMPILE_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "mem_diffusion", "jax")

_NOISY_LOGGERS = ("absl", "jax", "jax._src", "orbax", "orbax.checkpoint", "tensorflow",
                  "etils", "clu")


# Libraries whose absl warnings are about their own bookkeeping (tfds: "variant
# folder has no dataset_info.json" before a clear data error; orbax: handler
# registries): dropped unless --verbose. Their errors always show.
_QUIET_SOURCES = ("tensorflow_datasets", "orbax", "etils", "clu")


class _ThirdPartyWarnings(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or not any(
        f"/{name}/" in record.pathname for name in _QUIET_SOURCES)


_FILTER = _ThirdPartyWarnings()


def set_verbosity(verbose: bool) -> None:
  """INFO logging from every library when `verbose`, else warnings and errors only
  (and third-party warnings only when they are errors)."""
  level = std_logging.INFO if verbose else std_logging.WARNING
  logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
  for name in _NOISY_LOGGERS:
    std_logging.getLogger(name).setLevel(level)
  absl_logger = std_logging.getLogger("absl")
  if verbose:
    absl_logger.removeFilter(_FILTER)
  elif _FILTER not in absl_logger.filters:
    absl_logger.addFilter(_FILTER)


def resolve_compile_cache(flag_value: str = "") -> str | None:
  """The cache directory to use: the flag, else $JAX_COMPILATION_CACHE_DIR,
  else DEFAULT_COMPILE_CACHE; None when the flag is 'none' (off)."""
  if flag_value.strip().lower() == "none":
    return None
  return (flag_value or os.environ.get("JAX_COMPILATION_CACHE_DIR")
          or DEFAULT_COMPILE_CACHE)


def enable_compile_cache(directory: str | None) -> None:
  """Turns JAX's persistent compilation cache on in `directory` (None: off).

  An unusable directory only costs the speed-up, so it is a warning, not an
  error: a read-only home must not stop a run.
  """
  import jax  # pylint: disable=g-import-not-at-top  # JAX loads after flag parsing
  if directory is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s)", directory, e)
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  # Only the tiny helper programs compile in under half a second; caching
  # them costs more disk reads than it saves.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# TensorFlow (tfds, clu) reads these once, at its import. The defaults keep its
# C++ chatter off the terminal: oneDNN announces itself on AVX-512 CPUs even
# at TF_CPP_MIN_LOG_LEVEL=2. TensorFlow only gathers uint8 images here, so
# its oneDNN math switch cannot change a result.
TENSORFLOW_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_tensorflow(environ=None) -> None:
  """Sets TENSORFLOW_DEFAULTS where the user exported nothing. For entry
  points, before anything imports TensorFlow; the library never calls it."""
  environ = os.environ if environ is None else environ
  for key, value in TENSORFLOW_DEFAULTS.items():
    environ.setdefault(key, value)


def setup(*, verbose: bool = False, compile_cache: str = "") -> str | None:
  """Both of the above; returns the cache directory in use (None: off)."""
  set_verbosity(verbose)
  directory = resolve_compile_cache(compile_cache)
  enable_compile_cache(directory)
  return directory
