"""--mode=sample and --mode=eval on a micro model, without training.

Params come from `sampling.params_file` (the converter's msgpack route), filled
with small random values so the network is not trivially zero; that keeps the
tests independent of the training loop and fast.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mem_diffusion import config as config_lib
from mem_diffusion import errors
from mem_diffusion.analysis import replicates
from mem_diffusion.port import convert
from mem_diffusion.run import checkpoint, evaluate, metrics, parallel, sampling, state, train
from mem_diffusion.models import unet_from_config
import train_helpers as th


def _config(workdir_params: str, **changes):
  config = th.micro_config(**changes)
  config.diffusion.steps = 20
  config.sampling.num_samples = 20  # not a multiple of the chunk: padding path
  config.sampling.batch_size = 8
  config.sampling.respacing = "5"
  config.sampling.params_file = workdir_params
  config.eval.num_heldout = 16
  return config


def _random_params_file(config, directory) -> str:
  model = unet_from_config(config.model, config.data.image_size)
  size = config.data.image_size
  y = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                         jnp.zeros((1,)), y))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  path = str(directory / "params.msgpack")
  convert.save_params(params, path)
  return path


@pytest.fixture(scope="session")
def params_file(tmp_path_factory):
  return _random_params_file(th.micro_config(), tmp_path_factory.mktemp("params"))


@pytest.fixture(scope="session")
def sampled(params_file, tmp_path_factory):
  """One complete sampling run: (config, workdir, images, labels)."""
  config = _config(params_file)
  workdir = str(tmp_path_factory.mktemp("sampled"))
  path = sampling.sample_to_workdir(config, workdir)
  with np.load(path) as f:
    return config, workdir, f["arr_0"], f["arr_1"]


def test_samples_file_format(sampled):
  config, workdir, images, labels = sampled
  assert os.path.basename(sampling.samples_path(config, workdir)) == "samples_20x8x8x3.npz"
  assert images.dtype == np.uint8 and images.shape == (20, 8, 8, 3)
  assert labels.shape == (20,) and np.all(labels == 0)
  assert os.path.exists(os.path.join(workdir, "samples", "grid.png"))
  assert not os.path.exists(os.path.join(workdir, "samples", "chunks"))
  # Random params give varied images, not a constant.
  assert len({im.tobytes() for im in images}) == 20


def test_to_uint8_rounds():
  x = jnp.array([-1.0, -0.996, 0.0, 0.999, 1.0, 3.0])
  # (x + 1) * 127.5 = 0, 0.51, 127.5, 254.87, 255, 510
  np.testing.assert_array_equal(np.asarray(sampling.to_uint8(x)), [0, 1, 128, 255, 255, 255])


def test_same_samples_on_one_and_four_devices(params_file):
  config = _config(params_file)
  params = jax.device_put(convert.load_params(params_file))
  key = jax.random.PRNGKey(3)
  four = parallel.data_mesh()
  one = parallel.data_mesh(jax.devices()[:1])
  assert four.devices.size == 4
  a = np.asarray(sampling.make_chunk_sampler(config, four)(params, key))
  b = np.asarray(sampling.make_chunk_sampler(config, one)(params, key))
  diff = np.abs(a.astype(int) - b.astype(int))
  # Same numbers up to float reassociation: at most a rounding flip of one level.
  assert diff.max() <= 1 and np.mean(diff == 0) > 0.999


def test_resume_reuses_chunks_and_matches(sampled, params_file, tmp_path, monkeypatch):
  config, _, reference, _ = sampled
  workdir = str(tmp_path)
  real = sampling.make_chunk_sampler
  calls = []

  def failing_after_two(cfg, mesh):
    fn = real(cfg, mesh)
    def wrapped(params, key, start=0):
      if len(calls) == 2:
        raise KeyboardInterrupt("simulated preemption")
      calls.append(1)
      return fn(params, key, start)
    return wrapped

  monkeypatch.setattr(sampling, "make_chunk_sampler", failing_after_two)
  with pytest.raises(KeyboardInterrupt):
    sampling.sample_to_workdir(config, workdir)
  chunk_dir = os.path.join(workdir, "samples", "chunks")
  assert sorted(f for f in os.listdir(chunk_dir) if f.startswith("chunk_")) == [
      "chunk_00000.npz", "chunk_00001.npz"]

  calls.clear()
  monkeypatch.setattr(sampling, "make_chunk_sampler",
                      lambda cfg, mesh: _counting(real(cfg, mesh), calls))
  path = sampling.sample_to_workdir(config, workdir)
  assert len(calls) == 1  # only the third (last) chunk was sampled again
  with np.load(path) as f:
    np.testing.assert_array_equal(f["arr_0"], reference)


def _counting(fn, calls):
  def wrapped(params, key, start=0):
    calls.append(1)
    return fn(params, key, start)
  return wrapped


def test_changed_settings_discard_stale_chunks(sampled, params_file, tmp_path):
  config, _, reference, _ = sampled
  workdir = str(tmp_path)
  chunk_dir = os.path.join(workdir, "samples", "chunks")
  os.makedirs(chunk_dir)
  with open(os.path.join(chunk_dir, "spec.json"), "w") as f:
    json.dump({"seed": 123}, f)
  np.savez(os.path.join(chunk_dir, "chunk_00000.npz"),
           images=np.zeros((8, 8, 8, 3), np.uint8))
  path = sampling.sample_to_workdir(config, workdir)
  with np.load(path) as f:
    np.testing.assert_array_equal(f["arr_0"], reference)


def test_eval_flags_copies_of_the_train_set(sampled, tmp_path):
  """Samples replaced by noisy copies of training images: all replicates."""
  config, _, images, labels = sampled
  from mem_diffusion import data  # pylint: disable=g-import-not-at-top
  train_set = data.build_train_set(config.data)
  workdir = str(tmp_path)
  rng = np.random.default_rng(0)
  copies = train_set.images[rng.integers(0, len(train_set), images.shape[0])]
  noisy = np.clip(copies.astype(int) + rng.integers(-3, 4, copies.shape), 0, 255).astype(np.uint8)
  os.makedirs(os.path.join(workdir, "samples"))
  np.savez(sampling.samples_path(config, workdir), arr_0=noisy, arr_1=labels)
  report = evaluate.evaluate_workdir(config, workdir)
  assert report["replicate_ratio"] == 1.0
  assert report["num_samples"] == 20 and report["num_train"] == len(train_set)
  assert report["quality"]["num_heldout"] == 16
  for name in ("report.json", "nearest_neighbors.png", "ratio_hist.png", "per_sample.npz",
               "distance_cdf.png"):
    assert os.path.exists(os.path.join(workdir, "eval", name)), name
  with open(os.path.join(workdir, "eval", "report.json")) as f:
    saved = json.load(f)
  assert saved["config_name"] == config.name and saved["replicate_ratio"] == 1.0


def test_eval_of_fresh_images_finds_no_replicates(sampled, tmp_path):
  config, _, _, labels = sampled
  from mem_diffusion import data  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  fresh = data.heldout_images(config.data, 20 + 16)[16:]  # not the quality set
  os.makedirs(os.path.join(workdir, "samples"))
  np.savez(sampling.samples_path(config, workdir), arr_0=fresh, arr_1=labels)
  report = evaluate.evaluate_workdir(config, workdir)
  assert report["replicate_ratio"] == 0.0


def test_sampling_without_checkpoint_says_what_to_do(tmp_path):
  config = th.micro_config()
  with pytest.raises(FileNotFoundError, match="train first"):
    sampling.sample_to_workdir(config, str(tmp_path))


@pytest.mark.slow  # a subprocess or a whole run: kept out of the fast suite's 5 minutes
def test_restoring_for_sampling_builds_no_train_step(tmp_path, monkeypatch):
  """Sampling needs only the state's structure, never the optimizer's step."""
  config = th.micro_config()
  mesh = parallel.data_mesh()
  saved = state.initial_state(config, mesh)
  with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=2) as ckpt:
    ckpt.save(3, saved, {"step": 3})

  def no_train_step(*args, **kwargs):
    raise AssertionError("the train step was built to restore for sampling")
  monkeypatch.setattr(train, "build", no_train_step)
  monkeypatch.setattr(train, "make_train_step", no_train_step)
  params, source = sampling.load_sampling_params(config, str(tmp_path), mesh)
  assert source == {"source": str(tmp_path / "checkpoints"), "step": 3}
  assert metrics.tree_sha256(jax.device_get(params)) == metrics.tree_sha256(
      jax.device_get(saved.ema_params))


def test_label_minus_one_samples_every_class_in_turn(tmp_path):
  """Three classes and chunks of 8: chunk 1 starts at label 8 % 3 = 2."""
  config = th.micro_config(model__num_classes=3, sampling__label=-1)
  config = _config(_random_params_file(config, tmp_path), model__num_classes=3,
                   sampling__label=-1)
  config_lib.validate_config(config)
  path = sampling.sample_to_workdir(config, str(tmp_path / "run"))
  with np.load(path) as f:
    images, labels = f["arr_0"], f["arr_1"]
  np.testing.assert_array_equal(labels, np.arange(20) % 3)
  # The written labels are the ones the model was given: chunk 1 resampled
  # with start=8 (labels 2, 0, 1, ...) gives its images again, and the labels
  # do reach the model (a start one class later changes every image, one
  # whole cycle later changes none).
  mesh = parallel.data_mesh()
  sampler = sampling.make_chunk_sampler(config, mesh)
  params = jax.device_put(convert.load_params(config.sampling.params_file),
                          parallel.replicated(mesh))
  key = jax.random.fold_in(jax.random.PRNGKey(config.sampling.seed), 1)
  at = lambda start: np.asarray(parallel.fetch(sampler(params, key, start)))
  np.testing.assert_array_equal(at(8), images[8:16])
  np.testing.assert_array_equal(at(11), images[8:16])
  assert all(not np.array_equal(a, b) for a, b in zip(at(9), images[8:16]))
  # One sampling run gives the replicate ratio of every class.
  train = np.concatenate([images[:2], np.zeros((3, 8, 8, 3), np.uint8)])
  report, _ = replicates.analyze(images, train, sample_labels=labels, blend_k=0)
  assert set(report["per_class"]) == {"0", "1", "2"}
  assert report["per_class"]["0"]["replicate_ratio"] > 0  # images[0] is in `train`


def test_label_minus_one_needs_a_conditional_model():
  config = th.micro_config(sampling__label=-1)
  with pytest.raises(errors.ConfigError, match=r"sampling\.label=-1 .*model\.num_classes > 0"):
    config_lib.validate_config(config)
  with pytest.raises(errors.ConfigError, match=r"sampling\.label"):
    config_lib.validate_config(th.micro_config(model__num_classes=2, sampling__label=-2))
