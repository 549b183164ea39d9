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


def fail_checkpoint_commit(step: int, monkeypatch) -> None:
  """Injects ENOSPC into the last write of one step's orbax save.

  That is the checkpoint metadata carrying the commit time, written from
  orbax's finalize thread after every array and item is on disk. An earlier
  injection point would leave tensorstore still writing array files into
  the temporary folder after the error, racing this process's own cleanup
  of it (a real run exits instead). `monkeypatch.undo()` frees the disk.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  cls = type(epath.Path("/"))
  real = cls.write_text

  def write_text(self, data, *args, **kwargs):
    if (f"{os.sep}{step}.orbax-checkpoint-tmp" in str(self)
        and self.name == "_CHECKPOINT_METADATA"
        and '"commit_timestamp_nsecs": null' not in data):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return real(self, data, *args, **kwargs)

  monkeypatch.setattr(cls, "write_text", write_text)
