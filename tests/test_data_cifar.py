"""CIFAR-10 loading through the real tfds code: mock_data (cars, class subsets,
hybrid and more-cars dummies); preparation from a tiny archive in the official
binary layout, placed by hand or downloaded from a server on 127.0.0.1; and the
errors when the data is missing and cannot (or may not) be downloaded.

Nothing here may reach the internet: a guard refuses, and fails the test on,
any DNS lookup or connection that is not to the loopback interface."""

import http.server
import io
import os
import socket
import tarfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from mem_diffusion import data
from mem_diffusion.data import cifar

MOCK_N = 400  # mock examples (labels uniform over 10 classes: ~40 cars)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(scope="module", autouse=True)
def _network_attempts():
  """Refuses non-loopback lookups and connections and records them."""
  attempts = []
  real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
  real_getaddrinfo = socket.getaddrinfo

  def refuse(what):
    attempts.append(what)
    raise OSError(f"test guard: no network access to {what!r}")

  def remote(address):  # AF_UNIX addresses are paths: local
    return isinstance(address, tuple) and address[0] not in _LOOPBACK

  def connect(self, address):
    return refuse(address) if remote(address) else real_connect(self, address)

  def connect_ex(self, address):
    return refuse(address) if remote(address) else real_connect_ex(self, address)

  def getaddrinfo(host, *args, **kwargs):
    if host not in (None, *_LOOPBACK, *(h.encode() for h in _LOOPBACK)):
      refuse(host)
    return real_getaddrinfo(host, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect_ex)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts


@pytest.fixture(autouse=True)
def _no_internet(_network_attempts):
  """Fails the test that tried, even where the code swallowed the refusal."""
  yield
  tried = list(_network_attempts)
  _network_attempts.clear()
  assert not tried, f"tried to reach the network: {tried}"


def _cfg(**kw):
  c = default.get_config().data
  c.image_size = 8
  for k, v in kw.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def mock_cars():
  with tfds.testing.mock_data(num_examples=MOCK_N):
    loaded = cifar.load_classes([cifar.AUTOMOBILE])[cifar.AUTOMOBILE]
  return loaded


def test_mock_cars_and_seeded_split(mock_cars):
  images, index = mock_cars
  assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3) and len(images) > 25
  cfg = _cfg(dataset="cifar_cars", num_original=10, dummy_kind="hybrid", num_dummy=6)
  with tfds.testing.mock_data(num_examples=MOCK_N):
    ts = data.build_train_set(cfg)
    again = data.build_train_set(cfg)
    small = data.build_train_set(_cfg(dataset="cifar_cars", num_original=5))
    held = data.heldout_images(cfg, 8)
  np.testing.assert_array_equal(ts.images, again.images)
  assert ts.num_classes == 2 and ts.num_original == 10 and len(ts) == 16
  np.testing.assert_array_equal(ts.labels, [0] * 10 + [1] * 6)
  assert set(ts.sources[:10]) == {"cifar10"} and set(ts.sources[10:]) == {"hybrid"}
  split = ts.split[str(cifar.AUTOMOBILE)]
  train, pool = split["train"], split["pool"]
  assert not set(train) & set(pool) and sorted(train + pool) == sorted(index.tolist())
  np.testing.assert_array_equal(ts.indices[:10], train)
  # Originals are the recorded cars, box-downscaled to 8x8.
  rows = np.searchsorted(index, train)
  np.testing.assert_array_equal(ts.images[:10], cifar.downscale(images[rows], 8))
  # Hybrids use pool cars in pool order, never train cars.
  np.testing.assert_array_equal(ts.car_indices[10:], pool[:6])
  assert (ts.car_indices[:10] == -1).all()
  # Nested: 5 originals are the first 5 of 10.
  np.testing.assert_array_equal(small.images, ts.images[:5])
  assert small.num_classes == 1 and (small.labels == 0).all()
  # Held-out cars: pool cars the hybrids do not use come first.
  np.testing.assert_array_equal(
      held, cifar.downscale(images[np.searchsorted(index, pool[6:14])], 8))


def test_mock_more_cars_and_class_subset():
  cars = _cfg(dataset="cifar_cars", num_original=8, dummy_kind="cars", num_dummy=12)
  classes = _cfg(dataset="cifar_classes", classes=(3, 1), class_counts=(6, 9))
  with tfds.testing.mock_data(num_examples=MOCK_N):
    ts = data.build_train_set(cars)
    sub = data.build_train_set(classes)
    too_many = _cfg(dataset="cifar_cars", num_original=MOCK_N)
    with pytest.raises(ValueError, match="class 1"):
      data.build_train_set(too_many)
  assert ts.num_classes == 1 and (ts.labels == 0).all() and len(ts) == 20
  assert list(ts.sources).count("cifar10_pool") == 12
  np.testing.assert_array_equal(ts.indices[8:], ts.split["1"]["pool"][:12])
  assert not set(ts.indices[:8]) & set(ts.indices[8:])
  assert sub.num_classes == 2 and len(sub) == 15
  np.testing.assert_array_equal(sub.labels, [0] * 6 + [1] * 9)
  assert set(sub.split) == {"1", "3"} and sub.images.shape[1:] == (8, 8, 3)
  manifest = sub.manifest(classes)
  assert manifest["images"][0] == {"source": "cifar10", "index": int(sub.indices[0]),
                                   "label": 0}


def _fake_binary_archive(path, per_file=4):
  """cifar-10-binary.tar.gz layout: label byte + 3072 bytes (R, G, B planes)."""
  rng = np.random.default_rng(0)
  expected = {}  # CIFAR index -> (label, HWC image)
  names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
  with tarfile.open(path, "w:gz") as tar:
    def add(name, payload):
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
    labels = [str(i) for i in range(10)]
    add("batches.meta.txt", ("\n".join(labels) + "\n").encode())
    for f, name in enumerate(names):
      records = []
      for r in range(per_file):
        label = 1 if r % 2 == 0 else 7
        chw = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
        records.append(bytes([label]) + chw.tobytes())
        idx = 50000 + r if name == "test_batch.bin" else f * per_file + r
        expected[idx] = (label, chw.transpose(1, 2, 0))
      add(name, b"".join(records))
  return expected


def test_manual_binary_archive_route(tmp_path, monkeypatch):
  archive = cifar.manual_archive_path(str(tmp_path))
  os.makedirs(os.path.dirname(archive))
  expected = _fake_binary_archive(archive)
  # A wrong file is refused with the official size and checksum. The manual
  # route needs no network, so data.download=False does not block it.
  with pytest.raises(cifar.CifarUnavailableError, match="sha256"):
    cifar.load_classes([1], str(tmp_path), download=False)
  # tfds checks the archive against the official checksum; the tiny test
  # archive cannot match, so only that comparison is switched off here.
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(download_manager.DownloadManager,
                      "_register_or_validate_checksums", lambda *a, **k: None)
  loaded = cifar.load_classes([1, 7], str(tmp_path), download=False)
  cars, index = loaded[1]
  want = sorted(i for i, (lab, _) in expected.items() if lab == 1)
  assert index.tolist() == want  # train_i -> i, test_i -> 50000 + i, sorted
  for img, i in zip(cars, index):
    np.testing.assert_array_equal(img, expected[i][1])
  assert len(loaded[7][0]) == len(expected) - len(want)


class _ArchiveServer(http.server.ThreadingHTTPServer):
  """Serves `payload` at /cifar-10-binary.tar.gz and logs every request."""

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _ArchiveHandler)
    self.payload, self.log = b"", []
    self.url = f"http://127.0.0.1:{self.server_address[1]}/{cifar._BINARY}"


class _ArchiveHandler(http.server.BaseHTTPRequestHandler):

  def _answer(self, body: bool):
    self.server.log.append(self.command)
    if self.path != f"/{cifar._BINARY}":
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(len(self.server.payload)))
    self.end_headers()
    if body:
      self.wfile.write(self.server.payload)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._answer(body=False)

  def do_GET(self):  # pylint: disable=invalid-name
    self._answer(body=True)

  def log_message(self, *args):
    del args  # keep test output quiet


@pytest.fixture(scope="module")
def archive_server():
  server = _ArchiveServer()
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


@pytest.fixture
def server(archive_server, tmp_path, monkeypatch):
  """The local server, with tfds's cifar10 builder downloading from it."""
  archive = tmp_path / "served" / cifar._BINARY
  archive.parent.mkdir()
  archive_server.expected = _fake_binary_archive(str(archive))
  archive_server.good = archive_server.payload = archive.read_bytes()
  archive_server.log.clear()
  _redirect(monkeypatch, archive_server.url)
  return archive_server


def _redirect(monkeypatch, url):
  """Points the download of tfds's cifar10 builder at `url`."""
  builder_cls = tfds.builder_cls("cifar10")
  real = builder_cls._cifar_info  # pylint: disable=protected-access
  monkeypatch.setattr(builder_cls, "_cifar_info",
                      property(lambda self: real.fget(self)._replace(url=url)))


def _assert_offline_routes(msg, data_dir):
  assert os.path.join(data_dir, "cifar10", "3.0.2") in msg
  assert cifar.manual_archive_path(data_dir) in msg and "unpickle" in msg
  assert msg.startswith(f"CIFAR-10 is not prepared in {data_dir} (taken from "
                        "data.tfds_data_dir")


def test_product_downloads_the_registered_official_archive(tmp_path):
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  url = cifar._download_url(tfds.builder("cifar10", data_dir=str(tmp_path)))
  assert url == cifar._BINARY_URL
  # The error message quotes the archive's size and checksum: tfds's own.
  info = checksums.get_all_url_infos()[url]
  assert (int(info.size), info.checksum, info.filename) == (
      cifar._BINARY_SIZE, cifar._BINARY_SHA256, cifar._BINARY)


def test_download_prepares_once_then_reads_locally(tmp_path, server):
  data_dir = str(tmp_path / "tfds")
  loaded = cifar.load_classes([1, 7], data_dir)
  assert server.log == ["HEAD", "GET"]
  assert os.path.isdir(os.path.join(data_dir, "cifar10", "3.0.2"))
  cars, index = loaded[1]
  want = sorted(i for i, (lab, _) in server.expected.items() if lab == 1)
  assert index.tolist() == want
  for img, i in zip(cars, index):
    np.testing.assert_array_equal(img, server.expected[i][1])
  assert len(loaded[7][0]) == len(server.expected) - len(want)
  # Prepared: the train set reads it without contacting the server again.
  ts = data.build_train_set(_cfg(dataset="cifar_cars", num_original=4,
                                 tfds_data_dir=data_dir))
  assert len(ts) == 4 and server.log == ["HEAD", "GET"]


def test_download_false_never_connects(tmp_path, server, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert cifar.resolve_data_dir("") == str(tmp_path)
  with pytest.raises(cifar.CifarUnavailableError) as err:
    data.build_train_set(_cfg(dataset="cifar_cars", num_original=10, download=False))
  msg = str(err.value)
  _assert_offline_routes(msg, str(tmp_path))
  assert "data.download=False" in msg.splitlines()[0]
  assert server.log == [] and not os.path.exists(tmp_path / "downloads")


@pytest.mark.parametrize("copied", ["empty_folder", "info_without_shards"])
def test_half_copied_version_folder_is_the_offline_message(tmp_path, copied):
  """A `cifar10/<version>/` folder copied only in part, with download off: the
  data error naming the incomplete folder, never tfds's KeyError."""
  folder = tmp_path / "cifar10" / cifar._version()
  folder.mkdir(parents=True)
  if copied == "info_without_shards":
    (folder / "dataset_info.json").write_text("{}")
  with pytest.raises(cifar.CifarUnavailableError) as err:
    cifar.load_classes([1], str(tmp_path), download=False)
  msg = str(err.value)
  _assert_offline_routes(msg, str(tmp_path))
  assert "incomplete" in msg.splitlines()[0] and err.value.exit_code == 2


def test_unreachable_server_fails_fast_with_offline_routes(tmp_path, monkeypatch):
  probe = socket.socket()
  probe.bind(("127.0.0.1", 0))
  port = probe.getsockname()[1]
  probe.close()  # nothing listens there: connections are refused
  _redirect(monkeypatch, f"http://127.0.0.1:{port}/{cifar._BINARY}")
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(cifar.CifarUnavailableError) as err:
    cifar.load_classes([1], data_dir)
  msg = str(err.value)
  _assert_offline_routes(msg, data_dir)
  assert f"127.0.0.1:{port}" in msg and "Connection refused" in msg.splitlines()[0]
  assert not os.path.exists(data_dir)
  assert err.value.exit_code == 2


def test_failed_download_leaves_nothing_that_breaks_the_next_try(tmp_path, server):
  data_dir = tmp_path / "tfds"
  (data_dir / "downloads" / "other").mkdir(parents=True)  # not ours: stays
  server.payload = b"an error page, not a gzip archive"
  with pytest.raises(cifar.CifarUnavailableError) as err:
    cifar.load_classes([1], str(data_dir))
  _assert_offline_routes(str(err.value), str(data_dir))
  assert "GET" in server.log
  left = sorted(os.path.relpath(os.path.join(d, n), data_dir)
                for d, dirs, files in os.walk(data_dir) for n in dirs + files)
  assert left == ["downloads", os.path.join("downloads", "other")]
  # tfds would reuse a kept download of this (checksum-less) URL; none is kept.
  server.payload = server.good
  cars, _ = cifar.load_classes([1], str(data_dir))[1]
  assert len(cars) == sum(lab == 1 for lab, _ in server.expected.values())


def test_downscale_is_box_average():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
  got = cifar.downscale(x, 2)
  want = np.round(x.astype(float).reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4)))
  np.testing.assert_array_equal(got, want)
  assert cifar.downscale(x, 4) is x
  with pytest.raises(ValueError, match="image_size"):
    cifar.downscale(x, 3)
