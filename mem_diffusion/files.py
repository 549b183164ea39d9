"""Files on disk: one atomic writer for every output, checks for every input.

Writing. Every output goes to a temporary file next to its destination, is
flushed to the disk (fsync: with delayed allocation, a full disk is often
reported only then, not by `write`) and renamed over the destination, so a
reader sees the old file or the new one, never half of one. An OSError on
the way (ENOSPC, EDQUOT, EROFS, EACCES, ...) becomes one `OutputError` line
that names the path, the reason and the free space on its filesystem; the
temporary file is removed and the previous file stays as it was.

Reading. An input is opened only when it is a regular file (after following
links): /dev/zero would be read forever, a FIFO would block the open until
someone writes to it, a directory or a socket cannot be read at all. Sizes a
file declares (array shapes, file sizes) are compared with a memory budget
before anything is allocated: `max_input_bytes()`, 8 GiB unless the
environment variable MEM_DIFFUSION_MAX_INPUT_BYTES says otherwise (a number
of bytes). 8 GiB holds 2.8M CIFAR-sized uint8 images, far above any image
set or UNet params file this project uses, and still fits the smallest
machines it runs on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import stat
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from mem_diffusion.errors import InputError, OutputError

MAX_INPUT_ENV = "MEM_DIFFUSION_MAX_INPUT_BYTES"
DEFAULT_MAX_INPUT_BYTES = 8 * 2**30


def format_bytes(n: float) -> str:
  """1536 -> '1.5 KiB' (binary units, as `df -h` and `ls -lh` print them)."""
  n = float(n)
  for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
    if abs(n) < 1024 or unit == "PiB":
      return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError("unreachable")


# ----------------------------------------------------------------------------
# Writing.

def _free_space(path: str) -> str:
  """Free space on the filesystem that holds (or would hold) `path`."""
  probe = os.path.dirname(os.path.abspath(path))
  while probe and not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  try:
    return f"{format_bytes(shutil.disk_usage(probe).free)} free on its filesystem"
  except OSError:
    return "free space on its filesystem unknown"


_ADVICE = {
    errno.ENOSPC: "free some space, then rerun",
    errno.EDQUOT: "free some space or raise the disk quota, then rerun",
    errno.EROFS: "the filesystem is read-only; write somewhere else",
    errno.EACCES: "no permission to write there; write somewhere else",
    errno.EPERM: "no permission to write there; write somewhere else",
}


def output_error(path: str, error: BaseException, what: str = "",
                 note: str = "") -> OutputError:
  """The one-line OutputError for a failed write of `path`.

  Args:
    path: the file (or folder) that could not be written.
    error: the OSError (or the message-carrying error of a library that
      wrote for us) that stopped it.
    what: what `path` is, e.g. 'checkpoint 12 in', put before the path.
    note: appended to the message (e.g. what a rerun will do).
  """
  code = getattr(error, "errno", None)
  reason = getattr(error, "strerror", None) or _first_line(error) or type(error).__name__
  advice = _ADVICE.get(code, "check the location, then rerun")
  subject = f"{what} {path}" if what else path
  out = OutputError(f"cannot write {subject}: {reason} ({_free_space(path)}); {advice}{note}")
  out.errno = code
  return out


def _first_line(error: BaseException) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return lines[0][:300] if lines else ""


def _remove_quietly(path: str) -> None:
  with contextlib.suppress(OSError):
    os.remove(path)


def _refuse_special_target(path: str) -> None:
  """Renaming over a device or a FIFO would replace the node itself."""
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return
  if stat.S_ISDIR(mode):
    raise OutputError(f"cannot write {path}: it is a directory")
  if not stat.S_ISREG(mode):
    raise OutputError(f"cannot write {path}: it is {file_kind(mode)}, not a regular file")


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
  """A binary file object whose contents replace `path` when the block ends.

  Creates the parent folder. If the block raises, or the disk fills, the
  temporary file is removed and `path` keeps its old contents; an OSError
  comes out as `OutputError`.
  """
  path = os.fspath(path)
  _refuse_special_target(path)
  directory = os.path.dirname(os.path.abspath(path))
  # Same folder as the destination: os.replace is atomic only within one
  # filesystem. The pid and random part keep concurrent writers apart.
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-"
                                f"{secrets.token_hex(4)}")
  try:
    os.makedirs(directory, exist_ok=True)
    # 0o666 and the umask, like open(): mkstemp's 0o600 would hide reports
    # from the other users of a shared machine.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
  except OSError as e:
    raise output_error(path, e) from e
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    _remove_quietly(tmp)
    if isinstance(e, OSError) and not isinstance(e, OutputError):
      raise output_error(path, e) from e
    raise


def write_bytes(path: str, data: bytes) -> None:
  with atomic_writer(path) as f:
    f.write(data)


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """np.savez (uncompressed, no pickles), atomically."""
  with atomic_writer(path) as f:
    np.savez(f, allow_pickle=False, **arrays)


def to_json_value(obj: Any) -> Any:
  """Plain JSON values: numpy scalars/arrays unpacked, NaN/inf -> None."""
  if isinstance(obj, dict):
    return {str(k): to_json_value(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_json_value(v) for v in obj]
  if isinstance(obj, np.generic):
    return to_json_value(obj.item())
  if hasattr(obj, "__array__"):  # numpy and jax arrays
    a = np.asarray(obj)
    return to_json_value(a.tolist() if a.ndim else a.item())
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if obj is None or isinstance(obj, (str, int, float, bool)):
    return obj
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically.

  Keys keep the order the code built them in (a report leads with its
  headline numbers; sorting would bury them). NaN and inf become null: JSON
  has no such numbers (RFC 8259), and Python's `NaN` token is rejected by
  jq, JavaScript and most other readers, while null reads as 'no value',
  which is what a non-finite metric is. Numpy values are unpacked. A value
  that is none of these raises TypeError before anything is written.
  """
  text = json.dumps(to_json_value(obj), indent=2, allow_nan=False) + "\n"
  write_bytes(path, text.encode())


def check_distinct(paths: Mapping[str, str]) -> None:
  """Refuses two of a command's files ({flag: path}) at one place, links and
  hard links included: an output written over an input, or over another
  output, destroys it only after the compute has succeeded."""
  seen: dict[Any, tuple[str, str]] = {}
  for what, path in paths.items():
    if not path:
      continue
    try:
      st = os.stat(path)
      key: Any = (st.st_dev, st.st_ino)
    except OSError:
      key = os.path.realpath(path)
    if key in seen:
      raise InputError(f"{what} {path!r} is the same file as {seen[key][0]} {seen[key][1]!r}; "
                       "give each its own path")
    seen[key] = (what, path)


def check_output_path(path: str, what: str = "--out", *, create_parent: bool = False) -> str:
  """Refuses, before any compute, an output path that cannot be written.

  The parent folder must exist and be writable (with `create_parent`: the
  nearest existing folder above it, for writers that create the rest), and
  `path` must not be a directory or a special file (renaming over /dev/null
  would replace it). Returns `path`.

  Raises:
    InputError: one line naming `what` and the path.
  """
  label = f"{what} {path!r}"
  if not path:
    raise InputError(f"{what}: empty path; give a file to write")
  full = os.path.abspath(path)
  if os.path.isdir(full):
    raise InputError(f"{label} is a directory; give a file path (e.g. inside it)")
  if os.path.exists(full) and not os.path.isfile(full):
    raise InputError(f"{label} is {file_kind(os.stat(full).st_mode)}, not a regular file")
  parent = os.path.dirname(full)
  if create_parent:
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
      parent = os.path.dirname(parent)
  if not os.path.exists(parent):
    raise InputError(f"{label}: the folder {parent} does not exist; create it first")
  if not os.path.isdir(parent):
    raise InputError(f"{label}: {parent} is not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
    why = "its filesystem is read-only" if read_only else "permission denied"
    raise InputError(f"{label}: cannot write in {parent} ({why})")
  return path


# ----------------------------------------------------------------------------
# Reading.

def max_input_bytes() -> int:
  """The memory budget for what one input file declares (bytes)."""
  raw = os.environ.get(MAX_INPUT_ENV, "").strip()
  if not raw:
    return DEFAULT_MAX_INPUT_BYTES
  try:
    value = int(raw)
  except ValueError:
    value = -1
  if value <= 0:
    raise InputError(f"{MAX_INPUT_ENV}={raw!r}: expected a positive number of bytes, "
                     f"e.g. {16 * 2**30} for 16 GiB")
  return value


def check_budget(nbytes: int, name: str, what: str) -> None:
  """Raises InputError if `nbytes` (declared by `what` in `name`) is over budget."""
  budget = max_input_bytes()
  if nbytes > budget:
    raise InputError(
        f"{name}: {what} = {format_bytes(nbytes)}, more than the input memory "
        f"budget of {format_bytes(budget)} (raise it with {MAX_INPUT_ENV}=<bytes> "
        "if the file is genuine)")


def file_kind(mode: int) -> str:
  for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                     (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                     (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
    if test(mode):
      return kind
  return "a special file"


def _not_regular(path: str, name: str, mode: int) -> InputError:
  link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
  return InputError(f"{name}{link}: {file_kind(mode)}, not a regular file")


def check_input_file(path: str, name: str | None = None) -> os.stat_result:
  """The stat of `path` if it is a readable regular file, else InputError.

  Never opens the file, so a FIFO cannot block and a device is not touched.
  """
  name = name or path
  try:
    st = os.stat(path)
  except FileNotFoundError:
    if os.path.islink(path):
      raise InputError(f"{name}: not found (a broken link to {os.readlink(path)})") from None
    raise InputError(f"{name}: not found (no such file or directory)") from None
  except OSError as e:
    raise InputError(f"{name}: cannot be read ({e.strerror or e})") from None
  if not stat.S_ISREG(st.st_mode):
    raise _not_regular(path, name, st.st_mode)
  return st


def open_input(path: str, name: str | None = None) -> BinaryIO:
  """Opens a regular file for reading (binary), or raises InputError."""
  name = name or path
  check_input_file(path, name)
  try:
    # O_NONBLOCK: should the path have become a FIFO since the stat, the
    # open returns at once instead of waiting for a writer; fstat refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
  except OSError as e:
    raise InputError(f"{name}: cannot be read ({e.strerror or e})") from None
  mode = os.fstat(fd).st_mode
  if not stat.S_ISREG(mode):
    os.close(fd)
    raise _not_regular(path, name, mode)
  os.set_blocking(fd, True)
  return os.fdopen(fd, "rb")


def read_input_bytes(path: str, name: str | None = None) -> bytes:
  """The whole of a regular file no larger than the memory budget."""
  name = name or path
  with open_input(path, name) as f:
    size = os.fstat(f.fileno()).st_size
    check_budget(size, name, "the file's size")
    data = f.read(size + 1)
  if len(data) != size:
    raise InputError(f"{name}: changed size while being read ({size} -> {len(data)} bytes)")
  return data
