"""Strict loading of image sets in improved-diffusion's npz format.

`image_sample.py` of improved-diffusion writes `arr_0` (uint8, NHWC, 0..255)
and, for class-conditional models, `arr_1` (integer labels). The replicate
test measures raw pixel distances, so anything else (floats in [0, 1] or
[-1, 1], NCHW, grey images) would silently produce wrong numbers if it were
rescaled or transposed by guesswork: it is refused with a one-line message
that says what to do instead. Pickled/object arrays are never unpickled,
and nothing is allocated before the sizes the file declares are checked
(`read_npz`).
"""

from __future__ import annotations

import math
import os
from typing import Sequence
import zipfile
import zlib

import numpy as np

from mem_diffusion import files
from mem_diffusion.errors import InputError  # re-exported: callers catch npz_io.InputError


def check_images(images, name: str = "images") -> np.ndarray:
  """Returns `images` as a C-contiguous uint8 (N, H, W, 3) array or raises.

  Args:
    images: array-like of images.
    name: what to call the array in error messages (e.g. 'samples.npz:arr_0').
  """
  x = np.asarray(images)
  if x.dtype == object:
    raise InputError(f"{name}: object array; expected uint8 images")
  if x.dtype != np.uint8:
    detail = ""
    if np.issubdtype(x.dtype, np.floating) and x.size:
      if np.isnan(x).any():
        detail = ", contains NaN"
      else:
        detail = f", values in [{float(x.min()):.3g}, {float(x.max()):.3g}]"
    raise InputError(
        f"{name}: dtype {x.dtype}{detail}; expected uint8 pixels 0..255 "
        "(convert explicitly, e.g. np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8) "
        "for [-1, 1]; nothing is rescaled automatically)")
  if x.ndim != 4:
    raise InputError(f"{name}: shape {x.shape}; expected rank 4 (N, H, W, 3)")
  if x.shape[-1] != 3:
    hint = " (looks like NCHW: transpose to NHWC)" if x.shape[1] == 3 else ""
    raise InputError(f"{name}: shape {x.shape}; expected 3 channels last (N, H, W, 3){hint}")
  if 0 in x.shape:
    raise InputError(f"{name}: empty image set, shape {x.shape}")
  return np.ascontiguousarray(x)


def check_labels(labels, num: int, name: str = "labels") -> np.ndarray:
  """Returns integer labels of length `num` as int64, or raises InputError."""
  y = np.asarray(labels)
  if y.dtype == object or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
    raise InputError(f"{name}: dtype {y.dtype}; expected integer class labels")
  if y.shape != (num,):
    raise InputError(f"{name}: shape {y.shape}; expected ({num},), one label per image")
  return y.astype(np.int64)


def load_npz(path: str, *, name: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Loads (images, labels or None) from an improved-diffusion style npz.

  Raises:
    InputError: with a one-line message for every kind of bad file.
  """
  name = name or path
  arrays = read_npz(path, name=name, keys=("arr_0", "arr_1"), required=("arr_0",))
  images = check_images(arrays["arr_0"], f"{name}:arr_0")
  labels = arrays.get("arr_1")
  if labels is not None:
    labels = check_labels(labels, images.shape[0], f"{name}:arr_1")
  return images, labels


class NpzError(InputError):
  """A file that is not a readable npz; `problem` is the message without the name."""

  def __init__(self, name: str, problem: str):
    super().__init__(f"{name}: {problem}")
    self.problem = problem


# A zip starts with a local file header, or (no members) the end record.
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_START = b"\x93NUMPY"
_DAMAGED = (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError,
            NotImplementedError)


def read_npz(path: str, *, name: str | None = None, keys: Sequence[str] | None = None,
             required: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """The arrays `keys` (default: all) of an npz, read within the memory budget.

  Every array's .npy header is read first, and its declared shape and dtype
  must account for exactly the member's size in the archive, object dtypes
  are refused, and the declared bytes must fit `files.max_input_bytes()`;
  only then is anything allocated. So a zero-filled, truncated or hostile
  file costs a few reads and gives one line that says what is wrong.

  Raises:
    NpzError: the file is not a readable npz, or a `required` key is absent.
    InputError: the path is not a regular file.
  """
  name = name or path
  with files.open_input(path, name) as f:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
      raise NpzError(name, "empty file (0 bytes), not a valid npz (zip) file")
    if f.read(4) not in _ZIP_STARTS:
      raise NpzError(name, f"not a valid npz (zip) file ({_describe_start(f, size)})")
    f.seek(0)
    try:
      archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError):
      raise NpzError(name, f"truncated or damaged npz (zip) file ({size:,} bytes): it starts "
                     "as a zip archive but its directory at the end is missing") from None
    with archive:
      members = {n[:-len(".npy")]: archive.getinfo(n)
                 for n in archive.namelist() if n.endswith(".npy")}
      missing = [k for k in required if k not in members]
      if missing:
        raise NpzError(name, f"no {missing[0]} in the archive (keys: "
                       f"{', '.join(members) or 'none'})")
      wanted = list(members) if keys is None else [k for k in keys if k in members]
      total = sum(_check_member(archive, members[k], k, name) for k in wanted)
      files.check_budget(total, name, f"its {len(wanted)} arrays declare together")
      return {k: _read_member(archive, members[k], k, name) for k in wanted}


def _describe_start(f, size: int) -> str:
  f.seek(0)
  head = f.read(min(size, 1 << 16))
  if not head.strip(b"\0"):
    whole = "zero-filled" if len(head) == size else "starts with zero bytes"
    return f"{whole}, {size:,} bytes"
  if head.startswith(_NPY_START):
    return "a single .npy array, not an archive of arrays; save with np.savez"
  return f"{size:,} bytes starting with {head[:8].hex(' ')}"


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                  name: str) -> int:
  """The data bytes `key` declares, after checking them against the archive."""
  try:
    with archive.open(info) as m:
      version = np.lib.format.read_magic(m)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(m)
      elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(m)
      else:
        raise NpzError(name, f"{key}: .npy format version {version[0]}.{version[1]} "
                       "is not supported (1.0 and 2.0 are)")
      header = m.tell()
  except NpzError:
    raise
  except _DAMAGED as e:
    raise NpzError(name, f"{key}: not a readable .npy array ({_first_line(e)})") from None
  if dtype.hasobject:
    raise NpzError(name, f"{key}: dtype {dtype} is a pickled/object array; "
                   "refusing to unpickle")
  nbytes = math.prod(shape) * dtype.itemsize
  files.check_budget(nbytes, name, f"{key} declares shape {shape} {dtype}")
  held = info.file_size - header
  if held != nbytes:
    how = "truncated" if held < nbytes else "damaged"
    raise NpzError(name, f"{how}: {key} declares shape {shape} {dtype} = {nbytes:,} bytes "
                   f"of data, the archive holds {held:,}")
  return nbytes


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                 name: str) -> np.ndarray:
  try:
    with archive.open(info) as m:
      return np.lib.format.read_array(m, allow_pickle=False)
  except _DAMAGED as e:
    raise NpzError(name, f"{key}: damaged data ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return (lines[0][:200] if lines else "") or type(e).__name__
