"""Strict loading of image sets in improved-diffusion's npz format.

`image_sample.py` of improved-diffusion writes `arr_0` (uint8, NHWC, 0..255)
and, for class-conditional models, `arr_1` (integer labels). The replicate
test measures raw pixel distances, so anything else (floats in [0, 1] or
[-1, 1], NCHW, grey images) would silently produce wrong numbers if it were
rescaled or transposed by guesswork: it is refused with a one-line message
that says what to do instead. Pickled/object arrays are never unpickled.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np


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
  if not os.path.exists(path):
    raise InputError(f"{name}: no such file")
  if os.path.isdir(path):
    raise InputError(f"{name}: is a directory, expected an .npz file")
  if not zipfile.is_zipfile(path):
    raise InputError(f"{name}: not an .npz archive (expected arr_0 = uint8 NHWC images)")
  try:
    with np.load(path, allow_pickle=False) as data:
      keys = list(data.keys())
      if "arr_0" not in keys:
        raise InputError(f"{name}: no arr_0 in the archive (keys: {', '.join(keys) or 'none'})")
      images = data["arr_0"]
      labels = data["arr_1"] if "arr_1" in keys else None
  except InputError:
    raise
  except ValueError as e:  # object arrays refuse to load without pickle
    if "pickle" in str(e).lower() or "object" in str(e).lower():
      raise InputError(f"{name}: contains a pickled/object array; refusing to unpickle") from None
    raise InputError(f"{name}: unreadable npz ({str(e).splitlines()[0]})") from None
  except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
    raise InputError(f"{name}: unreadable npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  images = check_images(images, f"{name}:arr_0")
  if labels is not None:
    labels = check_labels(labels, images.shape[0], f"{name}:arr_1")
  return images, labels
