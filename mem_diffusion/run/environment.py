"""What a run's numbers depend on besides its config, recorded and checked on resume.

The same config computes different last bits under other XLA flags, another
jax/jaxlib or another kind of device; a run resumed across such a change
mixes two numerics in one trajectory without saying so. So training writes
these facts into `config.json` (key `environment`) and `train_summary.json`,
the sweep into its summary and the benchmarks into their JSON lines, and a
training run that resumes from a checkpoint compares the recorded values of
CHECKED with the current ones: a change is refused with one line naming it,
unless the user accepts it (`main.py --accept_environment_change`, or
MEM_DIFFUSION_ACCEPT_ENVIRONMENT=1 for any entry point, the sweep's workers
included). The other facts (GLIBC_TUNABLES, device and process counts) are
recorded for the reader; they do not change what a step computes.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any, Mapping, Sequence

from mem_diffusion import errors

RECORD_KEY = "environment"
CHECKED = ("platform", "device_kind", "jax", "jaxlib", "xla_flags")
ACCEPT_ENV = "MEM_DIFFUSION_ACCEPT_ENVIRONMENT"


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def process_facts(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
  """The facts known without starting a JAX backend (a sweep's parent must
  not: on a GPU host it would take the memory its workers need)."""
  environ = os.environ if environ is None else environ
  return {"jax": _version("jax"), "jaxlib": _version("jaxlib"),
          "xla_flags": environ.get("XLA_FLAGS", ""),
          "glibc_tunables": environ.get("GLIBC_TUNABLES", ""),
          "jax_platforms": environ.get("JAX_PLATFORMS", "")}


def facts(devices: Sequence[Any] | None = None, *, micro_batches: int | None = None,
          environ: Mapping[str, str] | None = None) -> dict[str, Any]:
  """process_facts and the devices'; starts JAX's backend when `devices` is None."""
  import jax  # pylint: disable=import-outside-toplevel  # the caller decides when JAX starts
  devices = list(jax.devices() if devices is None else devices)
  out = {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
         "num_devices": len(devices), "num_processes": jax.process_count(),
         **process_facts(environ)}
  if micro_batches is not None:
    out["micro_batches"] = int(micro_batches)
  return out


def split_record(saved: dict[str, Any] | None) -> tuple[dict[str, Any] | None,
                                                         dict[str, Any] | None]:
  """config.json's content -> (the config alone, the recorded facts or None)."""
  if not isinstance(saved, dict):
    return saved, None
  config = {k: v for k, v in saved.items() if k != RECORD_KEY}
  recorded = saved.get(RECORD_KEY)
  return config, recorded if isinstance(recorded, dict) else None


def changes(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
  """'key: old -> new' for each CHECKED fact that differs (a record written
  before a fact was recorded does not count as a change of it)."""
  if not recorded:
    return []
  return [f"{k}: {recorded[k]!r} -> {current.get(k)!r}" for k in CHECKED
          if k in recorded and recorded[k] != current.get(k)]


def accepted_by_environment(environ: Mapping[str, str] | None = None) -> bool:
  environ = os.environ if environ is None else environ
  return environ.get(ACCEPT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_resume(recorded: Mapping[str, Any] | None, current: Mapping[str, Any], *,
                 accept: bool | None = None) -> str | None:
  """Raises ConfigError naming what changed since the checkpoints were made,
  unless `accept` (None: MEM_DIFFUSION_ACCEPT_ENVIRONMENT); returns the note
  to print when an accepted change is taken, else None."""
  diffs = changes(recorded, current)
  if not diffs:
    return None
  if accept is None:
    accept = accepted_by_environment()
  if not accept:
    raise errors.ConfigError(
        f"the workdir's checkpoints were trained under another environment "
        f"({'; '.join(diffs)}); resuming would mix two numerics in one run. Use a new "
        f"--workdir, restore the environment, or accept the change with "
        f"--accept_environment_change ({ACCEPT_ENV}=1)")
  return f"note: resuming under another environment (accepted): {'; '.join(diffs)}"
