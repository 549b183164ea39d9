"""--mode=sample: EMA params -> `<workdir>/samples/samples_<N>x<H>x<W>x3.npz`.

Samples are made in chunks of `sampling.batch_size` images. Each chunk is one
jitted call of the whole reverse chain over the 'data' mesh (the chunk's rows
are sharded over every device of every process) and is written to
`samples/chunks/` as soon as it is done, so a preempted sampling run resumes
at the first missing chunk instead of starting over.

Chunk c draws all its randomness from fold_in(PRNGKey(sampling.seed), c) for
the global (chunk, H, W, 3) shape; JAX's partitionable threefry makes those
numbers independent of how the chunk is sharded, so the same config gives the
same images on 1 CPU, 8 GPUs or a pod. The last chunk is padded to the full
chunk size (one compilation) and truncated.

Any `sampling.batch_size` runs on any number of devices: a chunk that does
not split evenly is padded with extra rows up to the next multiple of the
device count, and the extra samples are dropped. Padding is exact because
threefry draws the first rows of an array the same whatever rows follow
(every draw of the chain has the chunk's rows as its leading axis), and
each row's chain is computed independently of the others. The padded rows
cost their compute: 500 on 16 devices samples 512 and keeps 500.

Labels (class-conditional models): `sampling.label` for every sample, or with
label -1 every class in turn, sample i (counted over the whole run) getting
i % model.num_classes. With `sampling.dummy_label_samples = k` the last k
samples get the dummy class's label (the dummy class's own replicate
ratio; the evaluation splits them off the headline). The labels written next to the images are the ones the
model was given, so the evaluation's per-class block splits one run by class.

Pixels are `round((x + 1) * 127.5)` clipped to 0..255. The reference
truncates instead, which biases every pixel down by half a level; rounding is
the unbiased choice, and both agree on which samples are replicates.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mem_diffusion.run import checkpoint as checkpoint_lib
from mem_diffusion.port import convert
from mem_diffusion import data
from mem_diffusion import files
from mem_diffusion import npz_io
from mem_diffusion.run import parallel
from mem_diffusion.run import progress as progress_lib
from mem_diffusion import report
from mem_diffusion.run import state as state_lib
from mem_diffusion.diffusion import diffusion_from_config
from mem_diffusion.diffusion import samplers
from mem_diffusion.models import unet_from_config
from mem_diffusion.run.workdir import Workdir

_SPEC_FILE = "spec.json"


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] floats -> uint8 pixels, rounded to nearest."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def samples_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  n, s = config.sampling.num_samples, config.data.image_size
  return Workdir(workdir).samples_npz(n, s)


def chain_description(sampling_cfg: ml_collections.ConfigDict) -> str:
  """Human-readable name of the reverse chain used, for logs and reports."""
  chain = "DDIM" if sampling_cfg.use_ddim or sampling_cfg.respacing.startswith("ddim") else "ancestral"
  steps = sampling_cfg.respacing or "full chain"
  eta = f", eta={sampling_cfg.eta}" if chain == "DDIM" else ""
  return f"{chain} ({steps}{eta})"


def sample_labels(config: ml_collections.ConfigDict, start: int, count: int) -> np.ndarray:
  """int64 labels of samples [start, start + count); 0 for an unconditional model."""
  k, label = config.model.num_classes, config.sampling.label
  if not k:
    return np.zeros(count, np.int64)
  index = start + np.arange(count, dtype=np.int64)
  if label == -1:
    return index % k
  labels = np.full(count, label, np.int64)
  first_dummy = config.sampling.num_samples - config.sampling.get("dummy_label_samples", 0)
  if index[-1:] >= first_dummy:
    labels[index >= first_dummy] = dummy_label(config)
  return labels


def dummy_label(config: ml_collections.ConfigDict) -> int:
  """The dummy class's label: the train set's last (data/train_set.py); the
  chunk sampler's slim config carries it as data.dummy_label."""
  if "dummy_label" in config.data:
    return int(config.data.dummy_label)
  return data.num_classes(config.data) - 1


def load_sampling_params(config: ml_collections.ConfigDict, workdir: str,
                         mesh: jax.sharding.Mesh) -> tuple[Any, dict[str, Any]]:
  """EMA params of the latest checkpoint, or `sampling.params_file` if set.

  `sampling.params_file` is a msgpack file written by `mem_diffusion.port.convert`
  (e.g. the released improved-diffusion CIFAR-10 model), which lets this
  project sample from models it did not train.
  """
  if config.sampling.params_file:
    name = f"sampling.params_file {config.sampling.params_file!r}"
    params = convert.load_params(config.sampling.params_file, name)
    convert.check_params_fit(params, unet_from_config(config.model, config.data.image_size),
                             name)
    params = jax.device_put(params, parallel.replicated(mesh))
    return params, {"source": os.path.abspath(config.sampling.params_file)}

  ckpt_dir = Workdir(workdir).checkpoints
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
        f"no checkpoints in {ckpt_dir}: train first (--mode=train or --mode=all) "
        "or set --config.sampling.params_file to a converted params file")
  with checkpoint_lib.Checkpointer(ckpt_dir, keep=config.training.keep_checkpoints) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}: train first")
    try:
      # Only the state's structure is needed: no train step is built.
      state, _ = ckpt.restore(step, state_lib.abstract_state(config, mesh))
    except Exception as e:  # pylint: disable=broad-except
      # Sampling an older checkpoint instead would silently report on a
      # less-trained model; training knows how to fall back and redo steps.
      raise checkpoint_lib.CheckpointCorruptError(
          f"checkpoint {step} in {ckpt_dir} cannot be restored ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''}); run --mode=train first: it "
          "moves a broken checkpoint aside and redoes its steps") from None
  return state.ema_params, {"source": ckpt_dir, "step": int(step)}


def make_chunk_sampler(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(ema_params, key, start=0) -> uint8 (chunk, H, W, 3) numpy images on every process.

  The chunk is computed sharded over 'data', padded to a multiple of the
  device count (module docstring), and gathered to the host.

  `start` is the run-wide index of the chunk's first sample; only the labels
  of `sampling.label = -1` depend on it. The labels are made on the host by
  `sample_labels` (the function that also writes them to the npz) and passed
  in as an array, so every chunk shares one compilation.

  Cached per (what the chain depends on, mesh), so a resumed or repeated
  sampling run in the same process (a sweep, the tests) compiles once.
  Training's periodic preview grid is this sampler too, with the preview's
  chunk size and chain length written into `config.sampling`.
  """
  relevant = {"model": config.model.to_dict(), "diffusion": config.diffusion.to_dict(),
              "sampling": config.sampling.to_dict(), "image_size": config.data.image_size,
              "dummy_label": (dummy_label(config) if config.sampling.get("dummy_label_samples")
                              else None)}
  return _cached_chunk_sampler(json.dumps(relevant, sort_keys=True, default=list), mesh)


@functools.lru_cache(maxsize=8)
def _cached_chunk_sampler(relevant_json: str, mesh: jax.sharding.Mesh):
  relevant = json.loads(relevant_json)
  config = ml_collections.ConfigDict({
      "model": relevant["model"], "diffusion": relevant["diffusion"],
      "sampling": relevant["sampling"],
      "data": {"image_size": relevant["image_size"], "dummy_label": relevant["dummy_label"]}})
  scfg = config.sampling
  model = unet_from_config(config.model, config.data.image_size)
  diffusion = diffusion_from_config(config.diffusion, config.model.learn_sigma,
                                    scfg.respacing)
  chunk, size = scfg.batch_size, config.data.image_size
  padded = -(-chunk // mesh.devices.size) * mesh.devices.size
  shape = (padded, size, size, 3)
  sharded = parallel.batch_sharded(mesh)
  ddim = bool(scfg.use_ddim or scfg.respacing.startswith("ddim"))

  def sample_chunk(params, key, y):
    noise = jax.random.normal(jax.random.fold_in(key, 0), shape, jnp.float32)
    # The starting noise fixes the sharding that propagates through the chain.
    noise = jax.lax.with_sharding_constraint(noise, sharded)

    def model_fn(x, t_model):
      return model.apply({"params": params}, x, t_model, y, train=False)

    x = samplers.sample(diffusion, model_fn, shape, jax.random.fold_in(key, 1),
                        ddim=ddim, eta=scfg.eta, clip_denoised=scfg.clip_denoised,
                        noise=noise)
    return to_uint8(x)

  replicated = parallel.replicated(mesh)
  jitted = jax.jit(sample_chunk, in_shardings=(replicated, None, replicated),
                   out_shardings=sharded)
  def run(params, key, start=0):
    labels = (sample_labels(config, start, padded).astype(np.int32)
              if config.model.num_classes else None)
    return np.asarray(parallel.fetch(jitted(params, key, labels)))[:chunk]
  return run


def preview_sampler(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(ema_params, key) -> uint8 images of training's periodic preview grid.

  The sampling module's chunk sampler with the preview's size and chain
  length (training.grid_*) and the sampling section's other settings, so the
  preview shows what --mode=sample would make, only fewer and coarser.
  """
  n = config.training.grid_num_samples
  preview = config.copy_and_resolve_references()
  preview.sampling.batch_size = n
  preview.sampling.respacing = config.training.grid_respacing
  preview.sampling.use_ddim = False  # DDIM only if grid_respacing says 'ddimN'
  sample_chunk = make_chunk_sampler(preview, mesh)
  return sample_chunk


def _spec(config: ml_collections.ConfigDict, source: dict[str, Any]) -> dict[str, Any]:
  """What a chunk depends on: chunks made under another spec are not reused."""
  s = config.sampling
  return {"num_samples": s.num_samples, "batch_size": s.batch_size, "seed": s.seed,
          "respacing": s.respacing, "use_ddim": s.use_ddim, "eta": s.eta,
          "clip_denoised": s.clip_denoised, "label": s.label,
          "image_size": config.data.image_size, "params": source}


def _prepare_chunk_dir(chunk_dir: str, spec: dict[str, Any]) -> None:
  spec_path = os.path.join(chunk_dir, _SPEC_FILE)
  if os.path.exists(spec_path):
    with open(spec_path) as f:
      old = json.load(f)
    if old == json.loads(json.dumps(spec)):
      return
    logging.warning("sampling settings or params changed since the saved chunks "
                    "were made; discarding them")
    shutil.rmtree(chunk_dir)
  files.write_json(spec_path, spec)


def _read_chunk(chunk_dir: str, c: int) -> np.ndarray:
  path = os.path.join(chunk_dir, f"chunk_{c:05d}.npz")
  try:
    return npz_io.read_npz(path, keys=("images",), required=("images",))["images"]
  except npz_io.InputError as e:
    raise npz_io.InputError(f"{e}; delete it and rerun to sample that chunk again") from None


def sample_to_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the samples npz and grid.png; returns the npz path."""
  scfg = config.sampling
  mesh = parallel.data_mesh()
  workdir = os.path.abspath(workdir)
  out_path = samples_path(config, workdir)
  chunk_dir = Workdir(workdir).sample_chunks
  params, source = load_sampling_params(config, workdir, mesh)
  lead = jax.process_index() == 0
  if lead:
    _prepare_chunk_dir(chunk_dir, _spec(config, source))
  parallel.sync("sampling_chunks_ready")

  n, chunk = scfg.num_samples, scfg.batch_size
  num_chunks = -(-n // chunk)
  sample_chunk = make_chunk_sampler(config, mesh)
  root = jax.random.PRNGKey(scfg.seed)
  progress = progress_lib.Progress(num_chunks, label="sample", unit="chunk",
                                   items_per_unit=chunk, enabled=lead)
  progress.say(f"{n} images in {num_chunks} chunks of {chunk} with the "
               f"{chain_description(scfg)} on {progress_lib.devices_text(mesh.devices.size)}")
  # Chunks written by process 0 of an earlier run, as process 0 sees them:
  # every process must sample the same chunks (each is a collective).
  paths = [os.path.join(chunk_dir, f"chunk_{c:05d}.npz") for c in range(num_chunks)]
  done = parallel.from_lead(np.array([os.path.exists(p) for p in paths], bool))
  for c, path in enumerate(paths):
    if done[c]:
      continue
    images = sample_chunk(params, jax.random.fold_in(root, c), c * chunk)
    if lead:
      files.write_npz(path, images=images)
    progress.update(c + 1)
  parallel.sync("sampling_chunks_written")

  if lead:
    images = np.concatenate([_read_chunk(chunk_dir, c) for c in range(num_chunks)])[:n]
    labels = sample_labels(config, 0, n)
    files.write_npz(out_path, arr_0=images, arr_1=labels)
    report.save_png(Workdir(workdir).samples_grid,
                    report.image_grid(images[:64], ncols=8))
    shutil.rmtree(chunk_dir)
    progress.say(f"wrote {out_path}")
  parallel.sync("sampling_done")
  return out_path
