"""One run per workdir: an exclusive flock on `<workdir>/.lock`.

Two processes writing checkpoints, chunks or reports into the same workdir
would interleave their files and silently mix two runs. The lock is a
kernel `flock` on an open file, not the file's existence, so it is released
whenever the holding process ends, however it ends (SIGKILL, OOM killer, a
lost node): a dead run never leaves a stale lock to clean up by hand. The
file itself stays; it only records who held the lock last, for the message.

Only one process of a multi-process run takes the lock (process 0, chosen by
the caller); the others share its workdir by design.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import time
from typing import Callable, Iterator

from absl import logging

from mem_diffusion import errors

LOCK_NAME = ".lock"


class WorkdirLocked(errors.WorkdirError):
  """Another live process holds the workdir's lock."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return ""
  return f" ({text})" if text else ""


def _open_lock_file(path: str) -> int:
  """The lock file, opened without following a link (a `.lock` pointing at
  /dev/null or another run's lock would lock the wrong thing, or nothing).
  Anything but a regular file there is refused with one line."""
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # not inherited
  except OSError as e:
    if not (os.path.islink(path) or os.path.isdir(path)):  # e.g. a read-only folder
      raise errors.WorkdirError(f"cannot create the lock file {path} ({e.strerror})") from None
    kind = "a symbolic link" if os.path.islink(path) else "a directory"
    raise errors.WorkdirError(f"{path} is {kind}, not the run's lock file; "
                              "remove it and run again") from None
  mode = os.fstat(fd).st_mode
  if not stat.S_ISREG(mode):
    os.close(fd)
    raise errors.WorkdirError(f"{path} is not a regular file; remove it and run again")
  return fd


def _run_in_use(folder: str, holder: str) -> str:
  return (f"workdir {folder} is in use by another run{holder}; wait for it to finish, "
          "stop it, or use another --workdir")


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True, name: str = LOCK_NAME,
         in_use: Callable[[str, str], str] = _run_in_use) -> Iterator[None]:
  """Holds `<workdir>/<name>` exclusively for the duration of the block.

  A sweep's root takes the same kind of lock under another name (a run's
  workdir may be the root's child, and both locks are held at once);
  `in_use(folder, holder)` words the refusal for it.

  Raises:
    WorkdirLocked: at once (no waiting) when another process holds it.
  """
  if not enabled:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), name)
  fd = _open_lock_file(path)
  try:
    locked = True
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLocked(in_use(os.path.abspath(workdir), _holder(path))) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      # Some network/FUSE file systems (e.g. gcsfuse) have no locks at all:
      # running unprotected beats refusing to run.
      logging.warning("cannot lock %s (%s): concurrent runs in this workdir "
                      "will not be detected", path, e.strerror)
      locked = False
    if locked:
      os.ftruncate(fd, 0)
      os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    yield
  finally:
    os.close(fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def hold_for_run(workdir: str) -> Iterator[None]:
  """`hold` taken by process 0; every process of the run raises if it fails.

  Agreeing across processes matters: if only process 0 stopped, the others
  would wait for it forever in their first collective. JAX is imported here
  only: the sweep's parent takes its root's lock without loading it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from mem_diffusion.run import parallel  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized():
    # One process: lock without starting the backend, so that a refused run
    # ends before JAX's start-up logging (the error stays one line).
    with hold(workdir):
      yield
    return
  with contextlib.ExitStack() as stack:
    error = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(hold(workdir))
      except WorkdirLocked as e:
        error = e
    if parallel.any_process(error is not None):
      raise error or WorkdirLocked(
          f"workdir {os.path.abspath(workdir)} is in use by another run "
          "(process 0 could not lock it)")
    yield
