"""Which accelerators a parallel sweep hands to each of its workers.

`sweep --jobs=J` starts J worker processes. On a CPU host each is pinned to
one core (sweep.py says why). On a GPU host each must get GPUs of its own:
a JAX process sees every visible GPU, builds its mesh over all of them and
preallocates 75% of each, so two workers on shared GPUs run out of memory,
while one UNet-128 run at batch 128 is what one GPU is sized for. A worker's
GPUs are therefore named in its CUDA_VISIBLE_DEVICES; since no two workers
share a GPU, JAX's preallocation stays on (each takes 75% of its own).

The parent counts the accelerators without starting a JAX backend: a backend
in the parent would preallocate GPU memory that the workers then lack. It
reads, in order, an explicit --devices, JAX_PLATFORMS, CUDA_VISIBLE_DEVICES,
`nvidia-smi -L`, and the TPU device files.

A TPU host runs one process that owns all of its chips (a second process on
the same chips fails to start), so a TPU sweep runs one run at a time,
data-parallel over every chip: --jobs > 1 is refused there.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import subprocess
from typing import Callable, Mapping, Sequence

from mem_diffusion import errors


@dataclasses.dataclass(frozen=True)
class Host:
  platform: str  # 'cpu' | 'gpu' | 'tpu'
  devices: tuple[str, ...]  # accelerator ids as CUDA_VISIBLE_DEVICES names them; () on CPU
  source: str  # how they were found: every message that refuses a count names it


@dataclasses.dataclass(frozen=True)
class Slot:
  """What one worker position gets: environment entries, a CPU to pin, a label."""
  env: dict[str, str]
  cpu: int  # -1: not pinned
  label: str  # '' or e.g. 'gpu 0', 'gpus 2,3', 'cpu 1'


def nvidia_smi_ids(run: Callable[..., subprocess.CompletedProcess] = subprocess.run
                   ) -> tuple[str, ...]:
  """GPU ids from `nvidia-smi -L` (no CUDA context is created); () without a driver.

  MIG instances, where the listing has them, are what a process can be given,
  so their UUIDs replace the indices of the GPUs they partition.
  """
  try:
    proc = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return ()
  if proc.returncode:
    return ()
  gpus = re.findall(r"^GPU (\d+):", proc.stdout, re.M)
  migs = re.findall(r"^\s+MIG .*\(UUID: (MIG-[^)]+)\)", proc.stdout, re.M)
  return tuple(migs) if migs else tuple(gpus)


def _tpu_chips() -> int:
  # v2-v4 expose /dev/accel<N>, v5e and later one VFIO group per chip.
  return len(glob.glob("/dev/accel[0-9]*")) or len(glob.glob("/dev/vfio/[0-9]*"))


def _visible(value: str) -> tuple[str, ...]:
  """CUDA_VISIBLE_DEVICES -> ids; CUDA stops at the first invalid entry ('-1')."""
  ids = []
  for item in value.split(","):
    item = item.strip()
    if not item or item.startswith("-"):
      break
    ids.append(item)
  return tuple(ids)


def detect(environ: Mapping[str, str] = os.environ, *, override: int | None = None,
           gpu_ids: Callable[[], tuple[str, ...]] = nvidia_smi_ids,
           tpu_chips: Callable[[], int] = _tpu_chips) -> Host:
  """The accelerators this host would give a JAX process started with `environ`."""
  platforms = environ.get("JAX_PLATFORMS", "").lower().replace(" ", "")
  first = platforms.split(",")[0]
  visible = environ.get("CUDA_VISIBLE_DEVICES")
  if override is not None:
    if override == 0:
      return Host("cpu", (), "--devices=0")
    if first == "tpu":
      return Host("tpu", tuple(str(i) for i in range(override)), f"--devices={override}")
    ids = _visible(visible) if visible is not None else tuple(map(str, range(override)))
    if len(ids) < override:
      raise errors.ConfigError(f"--devices={override}, but CUDA_VISIBLE_DEVICES={visible} "
                               f"names {len(ids)}")
    return Host("gpu", ids[:override], f"--devices={override}")
  if first == "cpu":
    return Host("cpu", (), "JAX_PLATFORMS=cpu")
  if first == "tpu":
    return Host("tpu", tuple(str(i) for i in range(tpu_chips())), "JAX_PLATFORMS=tpu")
  if visible is not None:
    ids = _visible(visible)
    return (Host("gpu", ids, f"CUDA_VISIBLE_DEVICES={visible}") if ids
            else Host("cpu", (), f"CUDA_VISIBLE_DEVICES={visible!r}"))
  ids = gpu_ids()
  if ids:
    return Host("gpu", ids, "nvidia-smi -L")
  chips = tpu_chips()
  if chips and first in ("", "tpu"):
    return Host("tpu", tuple(str(i) for i in range(chips)), "TPU device files")
  return Host("cpu", (), "no GPU or TPU found")


def slots(host: Host, jobs: int, devices_per_run: int,
          cores: Sequence[int] | None = None) -> list[Slot]:
  """One Slot per worker position; errors.ConfigError when `jobs` does not fit."""
  if devices_per_run < 1:
    raise errors.ConfigError(f"--devices_per_run={devices_per_run}: must be >= 1")
  if host.platform == "cpu":
    cores = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
    # More workers than cores: pinning would stack several on one core.
    pin = jobs <= len(cores)
    return [Slot({}, cores[w] if pin else -1, f"cpu {cores[w]}" if pin else "")
            for w in range(jobs)]
  n = len(host.devices)
  if host.platform == "tpu":
    if jobs > 1:
      raise errors.ConfigError(
          f"--jobs={jobs} on a TPU host ({n} chips, {host.source}): one process owns all "
          "of a host's chips, so a TPU sweep runs one run at a time over all of them "
          "(--jobs=1)")
    return [Slot({}, -1, "")]
  if jobs * devices_per_run > n:
    raise errors.ConfigError(
        f"--jobs={jobs} x --devices_per_run={devices_per_run} needs {jobs * devices_per_run} "
        f"GPUs; this host has {n} ({host.source}): lower --jobs to "
        f"{max(n // devices_per_run, 1)} or less")
  out = []
  for w in range(jobs):
    ids = host.devices[w * devices_per_run:(w + 1) * devices_per_run]
    out.append(Slot({"CUDA_VISIBLE_DEVICES": ",".join(ids)}, -1,
                    ("gpu " if len(ids) == 1 else "gpus ") + ",".join(ids)))
  return out
