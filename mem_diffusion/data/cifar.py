"""CIFAR-10 through tensorflow-datasets, with a seeded class split.

The study needs the 6,000 automobile images (label 1) of train+test: a seeded
split puts `num_original` of them in the train set and keeps the rest as a
disjoint pool (the "more cars" dummies, the cars behind hybrids, and held-out
cars for the quality figure). Other classes split the same way.

Images are identified by their CIFAR-10 index: i for tfds id 'train_i' and
50000 + i for 'test_i' (the order of the official binary files), and each
class is sorted by that index before the seeded permutation, so a split does
not depend on the order in which tfds happens to read its shards.

When CIFAR-10 is not prepared, tfds prepares it: from a hand-placed archive in
`downloads/manual/` if there is one, else (with `data.download`, the default)
by downloading the official archive. Training clusters are often air-gapped,
so a failed or forbidden download ends in `CifarUnavailableError` naming the
two offline routes. Nothing is ever unpickled: tfds prepares CIFAR-10 from the
*binary* archive.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import urllib.error
import urllib.request

import jax
import numpy as np

from mem_diffusion import errors
from mem_diffusion.data import generators

CIFAR_SIZE = 32
NUM_CLASSES = 10
PER_CLASS = 6000  # train + test images of every CIFAR-10 class
AUTOMOBILE = 1  # label number; mock_data names the classes '0'..'9'
_BINARY = "cifar-10-binary.tar.gz"
_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_BINARY_SIZE = 170052171
_BINARY_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
# One connection attempt before handing the download to tfds: tfds retries a
# refused or unresolvable connection 10 times with exponential backoff (3.4
# minutes measured against a closed port) before it gives up.
_PROBE_TIMEOUT_S = 15


class CifarUnavailableError(errors.DataUnavailableError):
  """CIFAR-10 is not prepared locally and cannot be downloaded here."""


def resolve_data_dir(configured: str = "") -> str:
  """data.tfds_data_dir, else $TFDS_DATA_DIR, else tfds's default."""
  path = configured or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(path))


def manual_archive_path(data_dir: str) -> str:
  """Where tfds's default download config looks for a manually placed file."""
  return os.path.join(data_dir, "downloads", "manual", _BINARY)


def _version() -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # TensorFlow
  return str(tfds.builder_cls("cifar10").VERSION)


def _missing_data_message(data_dir: str, why: str) -> str:
  """The error text: where the data was looked for, why not fetched, what to do."""
  version = _version()
  return (
      f"CIFAR-10 is not prepared in {data_dir} (taken from data.tfds_data_dir, "
      f"else $TFDS_DATA_DIR, else ~/tensorflow_datasets), and {why}. "
      "Two offline routes work:\n"
      f"  1. Copy a prepared tfds folder: on any machine with internet run\n"
      "       python -c \"import tensorflow_datasets as tfds; "
      "tfds.builder('cifar10').download_and_prepare()\"\n"
      f"     then copy its ~/tensorflow_datasets/cifar10/{version}/ folder to "
      f"{os.path.join(data_dir, 'cifar10', version)}/ .\n"
      f"  2. Put the official binary archive {_BINARY} ({_BINARY_URL}, "
      f"{_BINARY_SIZE} bytes, sha256 {_BINARY_SHA256}) at\n"
      f"       {manual_archive_path(data_dir)}\n"
      "     and run again: tfds then prepares the dataset from it without "
      "network access. (The python-pickle archive cifar-10-python.tar.gz is "
      "not accepted: nothing here unpickles.)")


def _reason(e: BaseException) -> str:
  """A few words on why a download failed, not urllib3's whole retry chain."""
  if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException):
    e = e.reason
  text = str(e)
  errno_text = re.search(r"\[Errno -?\d+\] [^'\")\n]+", text)
  if errno_text:
    return errno_text.group(0).strip()
  first = text.splitlines()[0][:160] if text else ""
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _download_url(builder) -> str:
  """The URL tfds's cifar10 builder fetches (its private `_cifar_info`).

  Read from the builder rather than restated, so the reachability probe checks
  exactly what tfds will download (tests point that at a local server).
  """
  return getattr(getattr(builder, "_cifar_info", None), "url", _BINARY_URL)


def _probe(url: str, data_dir: str) -> None:
  """Fails fast, in one attempt, when the download server cannot be reached.

  urllib honours HTTP(S)_PROXY / NO_PROXY as requests (tfds's downloader)
  does, so a machine that downloads through a proxy passes. An HTTP error
  status means the server answered; tfds then reports what it gets.
  """
  try:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S):
      pass
  except urllib.error.HTTPError:
    pass
  except OSError as e:  # URLError, timeouts, refused connections, DNS
    raise CifarUnavailableError(_missing_data_message(
        data_dir, f"downloading it from {url} failed ({_reason(e)})")) from e


@contextlib.contextmanager
def _no_leftovers_on_failure(data_dir: str):
  """Removes what a failed tfds preparation created, and nothing else.

  tfds deletes its own `cifar10/incomplete.*` folder, but keeps the folders it
  made (`downloads/`, `downloads/extracted/`, `cifar10/`), the download's
  `downloads/cifar10/*.tmp.*` folder and any downloaded or extracted archive.
  A bad archive kept under a URL without a registered checksum would be reused
  by the next attempt, so everything that was not there before goes.
  """
  watched = [data_dir] + [os.path.join(data_dir, *parts) for parts in (
      ("cifar10",), ("downloads",), ("downloads", "cifar10"),
      ("downloads", "extracted"))]  # parents before children
  before = {d: set(os.listdir(d)) if os.path.isdir(d) else None for d in watched}
  try:
    yield
  except Exception:
    for d, entries in before.items():
      if not os.path.isdir(d):
        continue  # never made, or removed with a new parent above
      if entries is None:
        shutil.rmtree(d, ignore_errors=True)
        continue
      for name in set(os.listdir(d)) - entries:
        path = os.path.join(d, name)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          with contextlib.suppress(OSError):  # keep the original error
            os.remove(path)
    raise


def _prepare(builder, data_dir: str, download: bool) -> None:
  """tfds's own preparation, from the manual archive or the official URL."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # TensorFlow
  archive = manual_archive_path(data_dir)
  manual = os.path.exists(archive)
  if not manual and not download:
    partial = os.path.join(data_dir, "cifar10", _version())
    found = (f"{partial} is there but incomplete (a half-finished copy?), and "
             if os.path.isdir(partial) else "")
    raise CifarUnavailableError(_missing_data_message(
        data_dir, f"{found}data.download=False forbids fetching it (set it to True "
        "where this machine reaches the internet)"))
  url = _download_url(builder)
  if not manual:
    _probe(url, data_dir)
  # Built from the official archive, never from a prepared copy tfds may host
  # on GCS (tfds 4.9 has that off by default; this keeps it off).
  config = tfds.download.DownloadConfig(manual_dir=os.path.dirname(archive),
                                        try_download_gcs=False)
  try:
    with _no_leftovers_on_failure(data_dir):
      builder.download_and_prepare(download_config=config)
  except Exception as e:  # checksum mismatch, truncated file, full disk, ...
    if not manual:
      raise CifarUnavailableError(_missing_data_message(
          data_dir, f"downloading it from {url} failed ({_reason(e)})")) from e
    raise CifarUnavailableError(
        f"Preparing CIFAR-10 from {archive} failed ({_reason(e)}). The file "
        f"must be the official {_BINARY} ({_BINARY_SIZE} bytes, sha256 "
        f"{_BINARY_SHA256}).\n"
        + _missing_data_message(data_dir, "it could not be prepared from the "
                                "archive above")) from e


def _cifar_index(ids: np.ndarray) -> np.ndarray | None:
  out = np.empty(len(ids), np.int64)
  for k, raw in enumerate(ids):
    m = re.fullmatch(r"(train|test)_(\d+)", raw.decode() if isinstance(raw, bytes) else raw)
    if m is None:
      return None  # not real CIFAR ids (tfds.testing.mock_data): use read order
    out[k] = int(m.group(2)) + (50000 if m.group(1) == "test" else 0)
  return out


def load_classes(classes, data_dir: str = "", download: bool = True
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{class: (uint8 images (n, 32, 32, 3), CIFAR indices (n,))}, index-sorted.

  Reading is tried before preparing, so under `tfds.testing.mock_data` (which
  serves any dataset without files) nothing is prepared or downloaded.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # TensorFlow
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = resolve_data_dir(data_dir)
  wanted = sorted({int(c) for c in classes})

  def read():
    return tfds.load("cifar10", split="train+test", data_dir=data_dir,
                     download=False, shuffle_files=False)

  try:
    ds = read()
  except (AssertionError, KeyError):  # tfds: not prepared, or a half-copied version folder
    try:
      builder = tfds.builder("cifar10", data_dir=data_dir)
    except AssertionError as e:  # its dataset_info.json cannot be read
      partial = os.path.join(data_dir, "cifar10", _version())
      raise CifarUnavailableError(_missing_data_message(
          data_dir, f"{partial} is there but incomplete (a half-finished copy?): "
          "remove it, or copy the whole prepared folder again")) from e
    _prepare(builder, data_dir, download)
    try:
      ds = read()
    except AssertionError as e:
      raise CifarUnavailableError(_missing_data_message(
          data_dir, "tfds still finds no prepared copy after preparing it")) from e
  want = tf.constant(wanted, tf.int64)
  ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["label"], want)))
  images, labels, ids = [], [], []
  try:
    for batch in tfds.as_numpy(ds.batch(4096)):
      images.append(batch["image"])
      labels.append(batch["label"])
      ids.append(batch["id"])
  except tf.errors.OpError as e:  # shards missing or cut short in a copied folder
    raise CifarUnavailableError(_missing_data_message(
        data_dir, f"the copy there cannot be read ({_reason(e)}); copy the whole "
        "prepared folder again")) from e
  if not images:
    return {c: (np.zeros((0, CIFAR_SIZE, CIFAR_SIZE, 3), np.uint8),
                np.zeros((0,), np.int64)) for c in wanted}
  images = np.concatenate(images)
  labels = np.concatenate(labels)
  ids = np.concatenate(ids)
  index = _cifar_index(ids)
  if index is None:
    index = np.arange(len(ids), dtype=np.int64)
  out = {}
  for c in wanted:
    rows = np.flatnonzero(labels == c)
    rows = rows[np.argsort(index[rows], kind="stable")]
    out[c] = (images[rows].astype(np.uint8), index[rows])
  return out


@generators.on_cpu
def class_order(seed: int, cls: int, n: int) -> np.ndarray:
  """Seeded order of a class's images: the first k form the train set."""
  key = jax.random.fold_in(generators.stream_key(seed, generators.STREAM_CAR_SPLIT), cls)
  return np.asarray(jax.random.permutation(key, n))


def downscale(images: np.ndarray, size: int) -> np.ndarray:
  """Box (area) average to size x size, rounded; deterministic numpy."""
  images = np.asarray(images)
  h = images.shape[1]
  if size == h:
    return images
  if size <= 0 or h % size:
    raise ValueError(f"data.image_size={size} must divide {h} for CIFAR images")
  f = h // size
  x = images.astype(np.float64).reshape(len(images), size, f, size, f, images.shape[-1])
  return np.clip(np.round(x.mean(axis=(2, 4))), 0, 255).astype(np.uint8)
