"""Bounded file I/O: inputs that are not what they claim, outputs the disk refuses.

Every reader of an input file (samples and train npz, a sampling chunk, the
converter's npz and .pt, `sampling.params_file`) meets /dev/zero, a link to
it, a FIFO, a directory, a socket, empty, zero-filled and truncated files and
a header declaring an enormous shape: one line saying what the file is. Reads
run in a daemon thread with a deadline, so one that blocks fails, not hangs.

Every write through mem_diffusion.files meets a full disk: a small tmpfs where
the test can mount one (tests/disk_helpers.py), and an injected ENOSPC always.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import zipfile

import flax.serialization
import jax
import numpy as np
import pytest

from mem_diffusion.port import convert
from mem_diffusion import errors, files, npz_io
from mem_diffusion.run import parallel, sampling
from mem_diffusion.analysis import replicates
import disk_helpers
import train_helpers as th

DEADLINE_S = 60.0  # generous for a loaded CI machine; a correct read takes ms


def _within_deadline(fn, fifos=()):
  """fn()'s result; fails the test if fn takes longer than DEADLINE_S."""
  box = {}

  def run():
    try:
      box["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      box["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(DEADLINE_S)
  if thread.is_alive():
    for fifo in fifos:  # release a reader blocked on a FIFO's open
      with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    pytest.fail(f"the read did not return within {DEADLINE_S:.0f} s")
  if "error" in box:
    raise box["error"]
  return box["value"]


# ----------------------------------------------------------------------------
# Bad inputs, built at a given path.

@pytest.fixture
def sock_dir():
  """A short folder for sockets (AF_UNIX paths are limited to ~100 bytes)."""
  directory = tempfile.mkdtemp(prefix="sk", dir="/tmp")
  yield directory
  shutil.rmtree(directory, ignore_errors=True)

def _npy_member(shape, data_bytes, dtype="|u1"):
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buf, {"descr": dtype, "fortran_order": False, "shape": shape})
  return buf.getvalue() + b"\0" * data_bytes


def _zip(path, members):
  with zipfile.ZipFile(path, "w") as z:
    for name, data in members.items():
      z.writestr(name + ".npy", data)


def _make(kind, path, key, sock_dir):
  """Creates the bad input `kind` at `path` (npz members named `key`)."""
  if kind == "dev_zero":
    if not os.path.basename(path).startswith("chunk_"):
      return "/dev/zero"
    os.symlink("/dev/zero", path)  # a chunk's name is fixed: a link stands in
  elif kind == "link_to_dev_zero":
    os.symlink("/dev/zero", path)
  elif kind == "fifo":
    os.mkfifo(path)
  elif kind == "directory":
    os.mkdir(path)
  elif kind == "socket":  # bound in the short folder, linked from `path`
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(sock_dir, "s"))
    sock.close()
    os.symlink(os.path.join(sock_dir, "s"), path)
  elif kind == "empty":
    open(path, "wb").close()
  elif kind == "zero_filled":
    with open(path, "wb") as f:
      f.write(b"\0" * 4096)
  elif kind == "truncated":
    buf = io.BytesIO()
    np.savez(buf, **{key: np.zeros((4, 8, 8, 3), np.uint8)})
    with open(path, "wb") as f:
      f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
  elif kind == "truncated_member":  # intact zip, array data shorter than its shape
    _zip(path, {key: _npy_member((10, 8, 8, 3), 100)})
  elif kind == "huge_shape":  # 2.9 TiB declared in a 200-byte member
    _zip(path, {key: _npy_member((1_000_000, 1024, 1024, 3), 100)})
  else:
    raise ValueError(kind)
  return path


NPZ_EXPECTED = {
    "dev_zero": "a character device, not a regular file",
    "link_to_dev_zero": "(a link to /dev/zero): a character device, not a regular file",
    "fifo": "a FIFO (named pipe), not a regular file",
    "directory": "a directory, not a regular file",
    "socket": "a socket, not a regular file",
    "empty": "empty file (0 bytes), not a valid npz (zip) file",
    "zero_filled": "not a valid npz (zip) file (zero-filled, 4,096 bytes)",
    "truncated": "truncated or damaged npz (zip) file",
    "truncated_member": "declares shape (10, 8, 8, 3) uint8 = 1,920 bytes of data, the archive holds 100",
    "huge_shape": "declares shape (1000000, 1024, 1024, 3) uint8 = 2.9 TiB, more than the input "
                  "memory budget of 8.0 GiB",
}


def _samples_reader(path):
  npz_io.load_npz(path)


def _train_reader(path, tmp):
  """The replicates CLI's --train: exit 2 with one `error:` line."""
  good = os.path.join(tmp, "good.npz")
  np.savez(good, np.zeros((2, 8, 8, 3), np.uint8))
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = replicates.main(["--samples", good, "--train", path,
                          "--out", os.path.join(tmp, "r.json")])
  lines = err.getvalue().strip().splitlines()
  assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, lines)
  assert not os.path.exists(os.path.join(tmp, "r.json"))
  raise errors.InputError(lines[0][len("error: "):])


def _chunk_reader(path):
  sampling._read_chunk(os.path.dirname(path), 0)  # pylint: disable=protected-access


def _convert_reader(path, tmp):
  out = os.path.join(tmp, "out.msgpack")
  try:
    convert.main([path, out])
  except SystemExit as e:
    assert not os.path.exists(out)
    raise errors.InputError(str(e.code)) from None


# reader name -> (file name to create, npz member key, call(path, tmp))
NPZ_READERS = {
    "samples_npz": ("samples.npz", "arr_0", lambda p, t: _samples_reader(p)),
    "train_npz": ("train.npz", "arr_0", _train_reader),
    "sampling_chunk": ("chunk_00000.npz", "images", lambda p, t: _chunk_reader(p)),
    "converter_npz": ("golden.npz", "param/out.2.weight", _convert_reader),
}


@pytest.mark.parametrize("kind", list(NPZ_EXPECTED))
@pytest.mark.parametrize("reader", list(NPZ_READERS))
def test_npz_readers_refuse_bad_files_in_one_line(reader, kind, tmp_path, sock_dir):
  filename, key, call = NPZ_READERS[reader]
  path = _make(kind, str(tmp_path / filename), key, sock_dir)
  fifos = [path] if kind == "fifo" else []
  with pytest.raises(errors.InputError) as err:
    _within_deadline(lambda: call(path, str(tmp_path)), fifos)
  message = str(err.value)
  assert "\n" not in message, message
  assert NPZ_EXPECTED[kind] in message, message
  assert "pickle" not in message and "not found" not in message, message
  if kind == "fifo":
    assert stat.S_ISFIFO(os.stat(path).st_mode)  # never opened, so never consumed
  if reader == "sampling_chunk" and kind in ("zero_filled", "truncated"):
    assert message.endswith("delete it and rerun to sample that chunk again"), message


def test_budget_is_read_from_the_environment(tmp_path, monkeypatch):
  path = str(tmp_path / "s.npz")
  np.savez(path, np.zeros((4, 8, 8, 3), np.uint8))
  monkeypatch.setenv(files.MAX_INPUT_ENV, "500")
  with pytest.raises(errors.InputError, match=r"arr_0 declares shape \(4, 8, 8, 3\) uint8 = "
                     r"768 B, more than the input memory budget of 500 B \(raise it with "
                     "MEM_DIFFUSION_MAX_INPUT_BYTES"):
    npz_io.load_npz(path)
  monkeypatch.setenv(files.MAX_INPUT_ENV, "768")
  assert npz_io.load_npz(path)[0].shape == (4, 8, 8, 3)
  monkeypatch.setenv(files.MAX_INPUT_ENV, "8G")
  with pytest.raises(errors.InputError, match="MEM_DIFFUSION_MAX_INPUT_BYTES='8G': expected"):
    npz_io.load_npz(path)


# ----------------------------------------------------------------------------
# Params files: `sampling.params_file` (msgpack) and the converter's .pt.

PARAMS_EXPECTED = dict(
    NPZ_EXPECTED,
    empty="empty file (0 bytes), not a params file",
    zero_filled="zero-filled (4,096 bytes)",
    truncated="truncated: its msgpack data ends early",
    huge="the file's size = ",
)
del PARAMS_EXPECTED["truncated_member"], PARAMS_EXPECTED["huge_shape"]


@pytest.fixture(scope="module")
def params_bytes():
  """A real params file of the micro config's UNet."""
  config = th.micro_config()
  model = convert.unet_from_config(config.model, config.data.image_size)
  abstract = convert.abstract_params(model)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  return flax.serialization.msgpack_serialize(params)


@pytest.mark.parametrize("kind", list(PARAMS_EXPECTED))
def test_params_file_refused_in_one_line(kind, params_bytes, tmp_path, monkeypatch, sock_dir):
  path = str(tmp_path / "params.msgpack")
  if kind == "truncated":
    open(path, "wb").write(params_bytes[:len(params_bytes) // 2])
  elif kind == "huge":
    open(path, "wb").write(params_bytes)
    monkeypatch.setenv(files.MAX_INPUT_ENV, str(len(params_bytes) - 1))
  else:
    path = _make(kind, path, "unused", sock_dir)
  config = th.micro_config(sampling__params_file=path)
  with pytest.raises(errors.InputError) as err:
    _within_deadline(lambda: sampling.load_sampling_params(
        config, str(tmp_path), parallel.data_mesh()), [path] if kind == "fifo" else [])
  message = str(err.value)
  assert "\n" not in message and PARAMS_EXPECTED[kind] in message, message
  assert message.startswith(f"sampling.params_file {path!r}"), message


def test_params_of_another_model_refused(params_bytes, tmp_path):
  path = str(tmp_path / "params.msgpack")
  open(path, "wb").write(params_bytes)
  config = th.micro_config(sampling__params_file=path)
  params, source = sampling.load_sampling_params(config, str(tmp_path), parallel.data_mesh())
  assert source == {"source": path}
  config = th.micro_config(sampling__params_file=path, model__model_channels=64)
  with pytest.raises(errors.InputError, match=r"not params of the configured model: \S+ has "
                     r"shape \(.*32\), the model needs \(.*64\)"):
    sampling.load_sampling_params(config, str(tmp_path), parallel.data_mesh())


@pytest.mark.parametrize("kind", ["link_to_dev_zero", "fifo", "directory", "huge"])
def test_converter_pt_input_checked_before_torch(kind, tmp_path, monkeypatch, sock_dir):
  """Checked before torch is imported, so this holds with or without torch."""
  path = str(tmp_path / "model.pt")
  if kind == "huge":
    open(path, "wb").write(b"\0" * 1000)
    monkeypatch.setenv(files.MAX_INPUT_ENV, "999")
  else:
    _make(kind, path, "unused", sock_dir)
  with pytest.raises(SystemExit) as err:
    _within_deadline(lambda: convert.main([path, str(tmp_path / "o.msgpack"), "--config",
                                           "configs/default.py"]),
                     [path] if kind == "fifo" else [])
  message = str(err.value.code)
  expected = PARAMS_EXPECTED[kind]
  assert message.startswith(f"convert: {path}: input file") and expected in message, message


# ----------------------------------------------------------------------------
# The writer: JSON format, atomicity, full and read-only disks.

def test_write_json_keeps_order_nulls_nan_and_unpacks_numpy(tmp_path):
  path = tmp_path / "sub" / "r.json"
  files.write_json(str(path), {"z": np.int64(3), "b": np.arange(3), "c": np.float32(0.5),
                               "d": float("nan"), "e": [np.float64("inf")], 4: [np.bool_(True)]})
  text = path.read_text()
  assert json.loads(text) == {"z": 3, "b": [0, 1, 2], "c": 0.5, "d": None, "e": [None],
                              "4": [True]}
  assert list(json.loads(text)) == ["z", "b", "c", "d", "e", "4"]  # insertion order
  assert "NaN" not in text and "Infinity" not in text
  files.write_json(str(path), {"x": 1})  # overwrite in place
  assert json.loads(path.read_text()) == {"x": 1}
  assert os.listdir(path.parent) == ["r.json"]  # no temporary file left behind


def test_write_json_unserialisable_keeps_old_file(tmp_path):
  path = tmp_path / "r.json"
  files.write_json(str(path), {"ok": True})
  with pytest.raises(TypeError):
    files.write_json(str(path), {"bad": object()})
  assert json.loads(path.read_text()) == {"ok": True}
  assert os.listdir(tmp_path) == ["r.json"]


WRITES = {
    "json": lambda p: files.write_json(p, {"x": list(range(20000))}),
    "npz": lambda p: files.write_npz(p, images=np.ones((64, 32, 32, 3), np.uint8)),
    "bytes": lambda p: files.write_bytes(p, b"\1" * 200_000),
}


@pytest.mark.parametrize("what", list(WRITES))
@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_full_disk_is_one_output_error_and_keeps_the_old_file(disk, what, tmp_path,
                                                              monkeypatch):
  directory = str(tmp_path / "out")
  with contextlib.ExitStack() as stack:
    if disk == "tmpfs":
      stack.enter_context(disk_helpers.small_disk(directory, "512k"))
    else:
      os.makedirs(directory)
    path = os.path.join(directory, "result")
    files.write_bytes(path, b"old contents")
    if disk == "tmpfs":
      disk_helpers.fill(directory, leave=16 << 10)
    else:  # where delayed allocation reports a full disk: the flush to disk
      def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(errors.OutputError) as err:
      WRITES[what](path)
    monkeypatch.undo()
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1, message
    assert message.startswith(f"cannot write {path}: No space left on device ("), message
    assert message.endswith(" free on its filesystem); free some space, then rerun"), message
    assert err.value.errno == errno.ENOSPC
    assert open(path, "rb").read() == b"old contents"
    assert sorted(os.listdir(directory)) == (["filler", "result"] if disk == "tmpfs"
                                             else ["result"])


def test_read_only_filesystem_and_output_path_checks(tmp_path):
  directory = str(tmp_path / "ro")
  with disk_helpers.small_disk(directory, "256k"):
    path = os.path.join(directory, "r.json")
    files.write_json(path, {"v": 1})
    disk_helpers.remount(directory, "ro")
    try:
      with pytest.raises(errors.OutputError, match=r"^cannot write .*r\.json: Read-only file "
                         r"system \(.* free on its filesystem\); the filesystem is read-only; "
                         "write somewhere else$"):
        files.write_json(path, {"v": 2})
      with pytest.raises(errors.InputError, match="its filesystem is read-only"):
        files.check_output_path(path)
    finally:
      disk_helpers.remount(directory, "rw")
    assert json.load(open(path)) == {"v": 1}


def test_check_output_path_refuses_before_any_compute(tmp_path):
  good = str(tmp_path / "r.json")
  assert files.check_output_path(good) == good
  (tmp_path / "file").write_text("x")
  os.mkfifo(tmp_path / "fifo")
  cases = {
      str(tmp_path): "is a directory; give a file path",
      str(tmp_path / "nope" / "r.json"): "does not exist; create it first",
      str(tmp_path / "file" / "r.json"): "is not a directory",
      str(tmp_path / "fifo"): "is a FIFO (named pipe), not a regular file",
      "/dev/null": "is a character device, not a regular file",
      "": "empty path",
  }
  for path, needle in cases.items():
    with pytest.raises(errors.InputError) as err:
      files.check_output_path(path)
    assert needle in str(err.value) and "\n" not in str(err.value), (path, str(err.value))
  # The writers themselves never rename over a special file either.
  with pytest.raises(errors.OutputError, match="FIFO"):
    files.write_json(str(tmp_path / "fifo"), {})
  assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


def test_replicates_cli_checks_out_before_reading(tmp_path, capsys):
  rc = replicates.main(["--samples", "/dev/zero", "--train", "/dev/zero",
                        "--out", str(tmp_path / "missing" / "r.json")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and err.startswith("error: --out ") and "does not exist" in err, err


def test_check_output_path_may_leave_missing_folders_to_the_writer(tmp_path):
  nested = str(tmp_path / "a" / "b" / "set.npz")
  assert files.check_output_path(nested, create_parent=True) == nested
  (tmp_path / "file").write_text("x")
  with pytest.raises(errors.InputError, match="is not a directory"):
    files.check_output_path(str(tmp_path / "file" / "b" / "set.npz"), create_parent=True)
