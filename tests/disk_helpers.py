"""A real full disk for the tests: a small tmpfs mounted for one test.

Mounting needs root and a kernel that lets this process mount (true on the
CI machines and the development sandbox). Where it is not allowed, the
tmpfs variant of a test is skipped with the reason, and its fault-injection
twin (which every disk-full test has) still runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from typing import Iterator

import pytest


def _run(*cmd: str) -> subprocess.CompletedProcess:
  return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def small_disk(path: str, size: str) -> Iterator[str]:
  """Mounts a tmpfs of `size` (e.g. '4m') at `path` for the block."""
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root; the injected variant covers this")
  done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                "the injected variant covers this")
  try:
    yield path
  finally:
    if _run("umount", path).returncode:
      _run("umount", "-l", path)


def remount(path: str, mode: str) -> None:
  """'ro' or 'rw' for a tmpfs mounted by `small_disk`."""
  done = _run("mount", "-o", f"remount,{mode}", path)
  assert done.returncode == 0, done.stderr


def fill(directory: str, leave: int) -> str:
  """Writes a filler file so that about `leave` bytes stay free; its path."""
  filler = os.path.join(directory, "filler")
  free = shutil.disk_usage(directory).free
  with open(filler, "wb") as f:
    chunk = b"\1" * (1 << 16)
    remaining = max(free - leave, 0)
    try:
      while remaining > 0:
        remaining -= f.write(chunk[:min(len(chunk), remaining)])
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
  return filler
